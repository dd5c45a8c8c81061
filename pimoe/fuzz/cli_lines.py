"""Bad (and some good) command lines for the commands that read user input: run, info, make-model,
disasm, plot. A hypothesis strategy: each slot of a command's template is drawn from values that are
fine, out of range, not numbers, not UTF-8, or files that are missing, empty, binary or the wrong record.
(compare, bandwidth, bench and doctor run for minutes on valid input; they share run's checks.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

NON_UTF8 = os.fsdecode(b"caf\xe9 \xff\xfe")          # what argv holds for bytes that are not UTF-8
NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1", "2", "1e9", "1000000000", "99999999999999999999999",
           "abc", "", " ", "0x10", "3.5", NON_UTF8]
SMALL = ["0", "1", "2", "-1", "-5", "abc", "nan", "", "3.5"]      # for counts whose big values take long
TEXTS = ["Hello", "", "\x00", "\x1b[31mred", "\n\n", NON_UTF8, "x" * 5000, "<|im_start|>", "\ud800"]


def make_inputs(workdir: Path) -> dict[str, str]:
    """Files the command lines point at (written once into workdir)."""
    d = Path(workdir) / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "empty": b"", "garbage": bytes(range(256)) * 8, "ggufhead": b"GGUF\x03\x00\x00\x00" + b"\xff" * 40,
        "rec_compare.json": json.dumps({"kind": "compare"}).encode(),
        "rec_bandwidth.json": json.dumps({"kind": "bandwidth", "cpu": None, "qpu": None, "rows": None}).encode(),
        "rec_list.json": b"[1, 2]", "rec_null.json": b"null", "rec_other.json": b'{"kind": "nope"}',
        "words.hex": b"0x3d803186bb800000\nzz\n", "words.bin": bytes(range(7)),
    }
    out = {}
    for name, data in files.items():
        p = d / name
        if not p.exists():
            p.write_bytes(data)
        out[name] = str(p)
    out["missing"] = str(d / "missing.gguf")
    out["dir"] = str(d)
    out["devnull"] = os.devnull
    return out


def command_lines(seeds: dict[str, Path] | None, workdir: Path):
    from hypothesis import strategies as st

    files = make_inputs(workdir)
    models = [str(p) for p in (seeds or {}).values()][:2]
    model = st.sampled_from(models + [files["empty"], files["garbage"], files["ggufhead"], files["missing"],
                                      files["dir"], files["devnull"], NON_UTF8])
    num, small, text = st.sampled_from(NUMBERS), st.sampled_from(SMALL), st.sampled_from(TEXTS)
    out_path = st.sampled_from([str(Path(workdir) / "out.gguf"), files["dir"], files["garbage"], "/proc/nope.gguf",
                                NON_UTF8])

    def opt(flag, values):
        return st.one_of(st.just([]), values.map(lambda v: [flag, v]))

    def cat(*parts):
        return st.tuples(*parts).map(lambda ps: [a for p in ps for a in p])

    run = cat(st.just(["run", "--no-warmup"]), st.tuples(st.just("-m"), model).map(list),
              opt("-p", text), st.just(["-n", "2"]) | small.map(lambda v: ["-n", v]),
              opt("--temperature", num), opt("--seed", num), opt("--ctx", num), opt("--backend", st.sampled_from(
                  ["cpu", "gpu", "", "qpu"])))
    info = cat(st.just(["info"]), st.tuples(st.just("-m"), model).map(list))
    keys = st.sampled_from(["n_experts_used", "n_experts", "hidden", "n_heads", "head_dim", "rms_eps", "bogus",
                            "", "vocab_size", "rope_base"])
    make = cat(st.just(["make-model", "--force"]), st.tuples(st.just("-o"), out_path).map(list),
               opt("--layers", small), opt("--type", st.sampled_from(["F32", "Q4_K", "IQ2_XS", "x", ""])),
               opt("--seed", num), st.lists(st.tuples(keys, num).map(lambda kv: ["--set", f"{kv[0]}={kv[1]}"]),
                                            max_size=2).map(lambda ls: [a for x in ls for a in x]))
    disasm = cat(st.just(["disasm"]), st.sampled_from(
        [[files["garbage"]], [files["words.hex"]], [files["words.bin"], "--binary"], [files["missing"]],
         ["qpu_kernels.summation:qpu_summation"], ["qpu_kernels.summation:nope"], ["nope.mod:f"], [":"],
         ["qpu_kernels.memcpy:qpu_memcpy"]]),
        st.lists(st.tuples(st.sampled_from(["threads", "barrier", "x", ""]), num).map(
            lambda kv: ["--arg", f"{kv[0]}={kv[1]}"]), max_size=2).map(lambda ls: [a for x in ls for a in x]))
    plot = cat(st.just(["plot"]), st.lists(st.sampled_from(
        [files[k] for k in ("garbage", "empty", "rec_compare.json", "rec_bandwidth.json", "rec_list.json",
                            "rec_null.json", "rec_other.json", "missing", "dir")]), min_size=1, max_size=2),
        st.just(["--out", str(Path(workdir) / "plots")]))
    return st.fixed_dictionaries({"kind": st.just("cli"), "argv": st.one_of(run, info, make, disasm, plot)})
