"""The llama.cpp reference itself: loaded so that it runs on AMX CPUs, and crash-contained.

On a CPU with AMX, llama.cpp built natively crashes in its AMX matmul unless models are loaded with
extra buffer types off (pimoe/llamaref.py). This machine may have no AMX, so the tests check the
setting that avoids the crash, and that a native crash in the reference (simulated with a real signal)
fails one test with the signal's name and the rebuild advice instead of killing pytest.
"""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")

import llama_ref  # noqa: E402
from pimoe.llamaref import REBUILD_ADVICE, cpu_has_amx, describe_exit, model_params  # noqa: E402

pytestmark = pytest.mark.llama


def test_reference_loads_models_with_extra_buffer_types_off(tiny_model):
    assert model_params().use_extra_bufts is False
    assert model_params(extra_bufts=True).use_extra_bufts is True     # the field is really there and settable
    ref = llama_ref.LlamaRef(tiny_model("qwen3moe", "Q4_0"))
    try:
        info = ref.info()
        assert info["use_extra_bufts"] is False
        import os

        assert info["pid"] != os.getpid()          # llama.cpp runs in the child, not in pytest's process
        assert ref.logits([1, 2, 3]).shape == (3, info["n_vocab"])
    finally:
        ref.close()


@pytest.mark.parametrize("sig", ["SIGSEGV", "SIGILL"])
def test_a_crash_in_llama_cpp_fails_one_test_naming_the_signal(tiny_model, sig):
    path = tiny_model("qwen3moe", "F32")
    ref = llama_ref.LlamaRef(path)
    first_pid = ref.info()["pid"]
    with pytest.raises(llama_ref.ReferenceCrashed) as exc:
        ref._child.call("crash", sig)
    msg = str(exc.value)
    assert f"killed by {sig}" in msg and "GGML_NATIVE=OFF" in msg and REBUILD_ADVICE in msg
    # the next request gets a fresh child, which reloads the model
    out = ref.logits([1, 2])
    assert out.shape[0] == 2 and ref.info()["pid"] != first_pid
    ref.close()


def test_cpu_has_amx_reads_the_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile amx_int8\n")
    assert cpu_has_amx(f)
    f.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not cpu_has_amx(f)
    assert not cpu_has_amx(tmp_path / "missing")


def test_describe_exit():
    assert describe_exit(-11) == "killed by SIGSEGV (signal 11)"
    assert describe_exit(-4) == "killed by SIGILL (signal 4)"
    assert describe_exit(3) == "exited with status 3"
