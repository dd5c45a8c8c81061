"""The Pi 4 CPU model (pimoe.cpumodel): roofline logic and consistency with published Pi 4 figures."""

from __future__ import annotations

import pytest

from pimoe.cpumodel import PI4_CPU, CPUParams, predict_cpu, predict_decode_step
from pimoe.errors import PimoeError
from pimoe.qpu import timing


def test_labelled_predicted_and_not_part_of_the_qpu_timing_model():
    p = predict_cpu(1e9, 1e9)
    assert "predicted" in p.label and p.as_dict()["predicted_seconds"] == p.seconds
    # the QPU toolchain's timing model does not carry the CPU model (pimoe.prediction uses both)
    assert not any(hasattr(timing, n) for n in ("predict_cpu", "predict_decode_step", "PI4_CPU", "CPUParams"))


def test_memory_bound_time_doubles_with_bytes_and_ignores_threads():
    a = predict_cpu(1e9, 1e6, threads=4)
    b = predict_cpu(2e9, 1e6, threads=4)
    assert a.bound == b.bound == "memory"
    assert a.seconds == pytest.approx(1e9 / 3.35e9)
    assert b.seconds == pytest.approx(2 * a.seconds)
    assert predict_cpu(1e9, 1e6, threads=1).seconds == pytest.approx(a.seconds)


def test_compute_bound_time_scales_with_flops_and_threads():
    a = predict_cpu(1e3, 23.8e9, threads=4)
    assert a.bound == "compute" and a.seconds == pytest.approx(1.0)
    assert predict_cpu(1e3, 23.8e9, threads=2).seconds == pytest.approx(2.0)
    assert predict_cpu(1e3, 11.9e9, threads=4, precision="fp64").seconds == pytest.approx(1.0)


def test_bound_switches_at_the_ridge_point():
    ridge = PI4_CPU.fp32_flops / PI4_CPU.decode_bandwidth        # FLOPs per byte
    assert predict_cpu(1e9, 0.9 * ridge * 1e9).bound == "memory"
    assert predict_cpu(1e9, 1.1 * ridge * 1e9).bound == "compute"


def test_bandwidth_kinds_are_ordered_as_published():
    # a real decode step gets less than STREAM triad, which is less than STREAM copy
    assert PI4_CPU.bandwidth("decode") < PI4_CPU.bandwidth("triad") < PI4_CPU.bandwidth("stream")
    assert predict_cpu(5.53e9, 0, bandwidth="stream").seconds == pytest.approx(1.0)


def test_published_llm_decode_rates_within_25_percent():
    """Consistency with the figures the decode bandwidth came from (not an independent check): tok/s =
    bandwidth / bytes per token. Bytes per token: the GGUF files' sizes (llama3.2:3b Q4_K_M 2.02 GB, as
    ollama ships it; TinyLlama-1.1B Q8_0 1.17 GB), ~2 FLOPs per weight."""
    for name, nbytes, params, published_tps in [("llama3.2:3b Q4_K_M on a Pi 400", 2.02e9, 3.2e9, 1.60),
                                                ("TinyLlama 1.1B Q8_0", 1.17e9, 1.1e9, 3.0)]:
        p = predict_decode_step(nbytes, 2 * params)
        assert p.bound == "memory", name
        assert 0.75 <= (1 / p.seconds) / published_tps <= 1.25, name


def test_fp32_ceiling_is_not_slower_than_a_published_measurement():
    """numpy's 1024^3 sgemm on a Pi 4 took 0.6986 s (py-videocore6 README): a ceiling must predict less."""
    flops = 2 * 1024 ** 3 + 3 * 1024 ** 2
    bytes_ = 3 * 1024 * 1024 * 4
    assert predict_cpu(bytes_, flops).seconds < 0.6986


def test_bad_input_raises():
    with pytest.raises(PimoeError, match="threads"):
        predict_cpu(1, 1, threads=5)
    with pytest.raises(PimoeError, match="non-negative"):
        predict_cpu(-1, 1)
    with pytest.raises(PimoeError, match="bandwidth kind"):
        predict_cpu(1, 1, bandwidth="l2")
    with pytest.raises(PimoeError, match="precision"):
        predict_cpu(1, 1, precision="fp16")
    assert CPUParams().as_dict()["fp64_flops"] == 11.9e9
