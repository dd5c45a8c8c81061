"""The headline: for the MoE models a Raspberry Pi 4 can hold, does offloading the experts to its GPU help?

    rows = headline(models=MODELS, mixes=MIXES)          # runs pimoe.compare on a slice of each, predicts
    print(table_text(rows))

One row per (model, weight mix). Two kinds of figure, never mixed:

* Fit (arithmetic, no run): the bytes a Pi 4 must hold, against 4 GB and 8 GB boards. The full-depth model
  is written as an all-zero sparse GGUF (instant, no disk) with the mix's exact tensor types, so `file` is
  the size a real file of that shape and mix has. CPU-only needs the file (memory-mapped: every expert is
  read sooner or later, so all of it must stay in the page cache to run at speed) + the KV cache + a
  reserve. QPU offload needs the part of the file the CPU still reads every token (attention, router,
  embedding, output head) + the QPU copy of the experts (pinned, in the QPU layout: 6 bits/weight for the
  q4 types, 10 for q8, pimoe.backends.qpu) + the KV cache + the reserve, and the QPU copy must fit the
  GPU's 4 GiB address space (pimoe.backends.qpu_memory). KV cache: pimoe's, f32, at `ctx` positions.
  Board RAM: the nominal 4 GiB / 8 GiB (pimoe.pi4.RAM_BYTES) less the stated reserve for the OS
  (qpu_memory.RESERVE).

* Speed (predicted for a Pi 4 by the timing models, never measured here): `pimoe compare` runs a slice of
  `layers` layers of a synthetic model of the real shape and mix on each backend (the QPU in the
  emulator), predicts each region's Pi 4 time (QPU regions from the emulator's counts, CPU regions from
  bytes and FLOPs), and scales the per-layer part to the full depth (pimoe/compare.py). The slice also
  checks that the QPU path picks the reference's greedy tokens.

The Q4_K_M-like mix is llama-quantize's Q4_K_M recipe (pimoe.bench.cpu.model_recipe): Q4_K, output head
Q6_K, attn_v and ffn_down_exps Q6_K in the use_more_bits layers. A 2-layer slice runs one such layer and
one plain Q4_K layer, the proportion (about half) the full recipe has.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pimoe.errors import PimoeError

# the Pi-4-sized models, then the one that shows why a 30B does not fit
MODELS = ("olmoe-1b-7b", "granite-3.0-1b-a400m", "granite-3.0-3b-a800m", "qwen1.5-moe-a2.7b", "qwen3-30b-a3b")
MIXES = ("Q4_K_M", "Q8_0")
BOARDS = ("4 GB", "8 GB")          # keys of pimoe.pi4.RAM_BYTES
DEFAULT_CTX = 2048


# -- fit --------------------------------------------------------------------------------------------------

def mix_recipe(mix: str, n_layers: int, slice_layers: int | None = None,
               tied: bool = False) -> tuple[str, dict[str, str]]:
    """(default type, {tensor: type}) of a weight mix for an n_layers model. slice_layers: a slice that
    stands for the full model: Q4_K_M's bumped layers are put first (layer 0 of a 2-layer slice).
    tied: the model has no output.weight; llama-quantize then gives the output head's type to token_embd."""
    from pimoe.bench.cpu import model_recipe

    qtype, types = model_recipe(mix, n_layers)
    if tied and "output.weight" in types:
        types["token_embd.weight"] = types.pop("output.weight")
    if slice_layers is None or not types:
        return qtype, types
    # the share of use_more_bits layers in the full model, rounded, over the slice's first layers
    full_bumped = sum(1 for k in types if k.startswith("blk.") and k.endswith("attn_v.weight"))
    n_bumped = max(1, round(slice_layers * full_bumped / n_layers)) if slice_layers > 1 else 0
    out = {k: v for k, v in types.items() if not k.startswith("blk.")}
    for i in range(n_bumped):
        out[f"blk.{i}.attn_v.weight"] = "Q6_K"
        out[f"blk.{i}.ffn_down_exps.weight"] = "Q6_K"
    return qtype, out


# llama-quantize's fallback for a tensor whose rows do not hold whole 256-value K blocks
# (llama_tensor_get_type: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0), e.g. Qwen1.5-MoE's 1408-wide experts
K_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def preset_recipe(preset: str, mix: str, layers: int | None = None) -> tuple[str, dict[str, str]]:
    """mix_recipe for a preset's full model (layers None) or a slice of `layers` layers, with the K-type
    fallback applied to every matrix whose rows do not fit 256-value blocks."""
    from dataclasses import replace

    from pimoe.synth import PRESETS, _tensor_plan

    shape = PRESETS[preset]
    qtype, types = mix_recipe(mix, shape.n_layers, slice_layers=layers, tied=_tied(preset))
    plan = _tensor_plan(replace(shape, n_layers=layers or shape.n_layers))
    for name, shp, kind, _ in plan:
        if kind != "matrix":
            continue
        t = types.get(name, qtype)
        if t in K_FALLBACK and shp[-1] % 256:
            types[name] = K_FALLBACK[t]
    return qtype, types


@dataclass(frozen=True)
class Fit:
    """Bytes a Pi 4 has to hold for one model and mix (see module doc)."""

    file_bytes: int
    cpu_read_bytes: int          # the part of the file the CPU reads every token (all but routed experts)
    qpu_copy_bytes: int          # the experts in the QPU layout + kernels' scratch and code
    kv_bytes: int                # pimoe's f32 KV cache at ctx positions
    ctx: int
    reserve_bytes: int
    cpu_need_bytes: int          # CPU-only: file + KV
    qpu_need_bytes: int          # QPU offload: CPU-read part + QPU copy + KV
    qpu_copy_fits_gpu_va: bool
    board_bytes: dict            # board -> usable RAM bytes (nominal less the reserve)
    fits_cpu: dict               # board -> bool
    fits_qpu: dict               # board -> bool

    def to_json(self) -> dict:
        return asdict(self)


def plan_fit(preset: str, mix: str, ctx: int = DEFAULT_CTX, cache_dir: Path | None = None) -> Fit:
    """The Fit of the full-depth model (written once as an all-zero sparse GGUF; a few MB of disk)."""
    from pimoe import pi4
    from pimoe.backends import qpu_memory as qm
    from pimoe.backends.qpu import CODE_AREA, MAX_TOKENS_PER_CALL
    from pimoe.gguf_file import GGUFFile
    from qpu_kernels.expert_ffn import ExpertFFN, QPUMatrices

    f = GGUFFile(full_model(preset, mix, cache_dir))
    cfg = f.config
    experts = [t for name, t in f.tensors.items() if "_exps" in name]
    copy = sum(QPUMatrices.nbytes_for(t) for t in experts)
    copy += ExpertFFN.scratch_bytes(cfg.hidden, cfg.expert_ff, cfg.n_experts_used, MAX_TOKENS_PER_CALL) + CODE_AREA
    cpu_read = sum(int(t.nbytes) for name, t in f.tensors.items() if "_exps" not in name)
    kv = 2 * cfg.n_layers * ctx * cfg.kv_dim * 4
    reserve = qm.RESERVE
    cpu_need = f.file_size + kv
    qpu_need = cpu_read + copy + kv
    va_ok = qm.bo_span([copy]) <= qm.gpu_address_space("hw")
    boards = {b: int(pi4.RAM_BYTES[b]) - reserve for b in BOARDS}
    return Fit(file_bytes=int(f.file_size), cpu_read_bytes=cpu_read, qpu_copy_bytes=int(copy), kv_bytes=kv,
               ctx=ctx, reserve_bytes=reserve, cpu_need_bytes=cpu_need, qpu_need_bytes=qpu_need,
               qpu_copy_fits_gpu_va=va_ok, board_bytes=boards,
               fits_cpu={b: cpu_need <= ram for b, ram in boards.items()},
               fits_qpu={b: va_ok and qpu_need <= ram for b, ram in boards.items()})


# -- speed ------------------------------------------------------------------------------------------------

def _cached(cache_dir: Path | None, name: str, write) -> Path:
    # the cache `pimoe run` and `pimoe compare` use ($XDG_CACHE_HOME/pimoe, else ~/.cache/pimoe)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = Path(cache_dir) if cache_dir is not None else Path(base) / "pimoe" / "headline"
    path = d / name
    if not path.exists():
        d.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    return path


def _tied(preset: str) -> bool:
    from pimoe.config import ARCHS
    from pimoe.synth import PRESETS

    shape = PRESETS[preset]
    return bool(shape.tied_output and ARCHS[shape.arch].tied_output)


def full_model(preset: str, mix: str, cache_dir: Path | None = None) -> Path:
    """The full-depth model in the mix as an all-zero sparse GGUF (right sizes and types, no data)."""
    from pimoe.synth import PRESETS, make_model

    qtype, types = preset_recipe(preset, mix)
    return _cached(cache_dir, f"{preset}-full-{mix.upper()}-empty.gguf",
                   lambda p: make_model(p, preset=preset, qtype=qtype, tensor_types=types, empty=True))


def slice_model(preset: str, mix: str, layers: int, cache_dir: Path | None = None) -> Path:
    """A `layers`-layer synthetic model of the preset's shape in the mix (written once, cached)."""
    from pimoe.synth import PRESETS, make_model

    qtype, types = preset_recipe(preset, mix, layers)
    return _cached(cache_dir, f"{preset}-{layers}L-{mix.upper()}.gguf",
                   lambda p: make_model(p, preset=preset, qtype=qtype, n_layers=layers, tensor_types=types))


def _get(obj, key, default=None):
    """A field of a compare result, typed (pimoe.compare dataclasses) or the record's dict form."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


@dataclass
class Row:
    model: str
    mix: str
    arch: str
    layers_full: int
    params: int                   # parameters of the full model
    fit: Fit
    layers_run: int = 0
    tps: dict = field(default_factory=dict)            # backend -> predicted Pi 4 decode t/s (full depth)
    seconds_per_token: dict = field(default_factory=dict)
    same_tokens: dict = field(default_factory=dict)    # backend -> greedy tokens equal to the reference's
    run_seconds: float = 0.0

    @property
    def ratio(self) -> float | None:
        cpu, qpu = self.tps.get("cpu"), self.tps.get("qpu")
        return qpu / cpu if cpu and qpu else None

    @property
    def hybrid_ratio(self) -> float | None:
        """CPU+QPU (hybrid backend) t/s over CPU-only t/s, when the row ran both."""
        cpu, both = self.tps.get("cpu"), self.tps.get("hybrid")
        return both / cpu if cpu and both else None

    source: str | None = None     # the record the row's figures come from, when combined from records

    def to_json(self) -> dict:
        d = asdict(self)
        d["fit"] = self.fit.to_json()
        d["qpu_over_cpu"] = self.ratio
        d["hybrid_over_cpu"] = self.hybrid_ratio
        return d

    @classmethod
    def from_json(cls, d: dict, source: str | None = None) -> "Row":
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in names and k != "fit"}
        kw["source"] = d.get("source") or source
        return cls(fit=Fit(**d["fit"]), **kw)

    def flat(self) -> dict:
        """One flat row (the CSV / JSONL form): bytes in GB, t/s predicted for a Pi 4."""
        f = self.fit
        out = {"model": self.model, "mix": self.mix, "arch": self.arch, "params_B": self.params / 1e9,
               "file_GB": f.file_bytes / 1e9, "kv_GB": f.kv_bytes / 1e9, "ctx": f.ctx,
               "qpu_copy_GB": f.qpu_copy_bytes / 1e9, "cpu_need_GB": f.cpu_need_bytes / 1e9,
               "qpu_need_GB": f.qpu_need_bytes / 1e9}
        for b in BOARDS:
            key = b.replace(" ", "")
            out[f"fits_{key}_cpu"] = f.fits_cpu[b]
            out[f"fits_{key}_qpu"] = f.fits_qpu[b]
        for backend in ("cpu", "qpu", "hybrid"):
            out[f"{backend}_tps_pred"] = self.tps.get(backend)
        out["qpu_over_cpu"] = self.ratio
        out["hybrid_over_cpu"] = self.hybrid_ratio
        out["layers_run"] = self.layers_run
        out["layers_full"] = self.layers_full
        return out


def run_row(preset: str, mix: str, layers: int = 2, n_prompt: int = 1, n_gen: int = 1, reps: int = 1,
            backends: tuple[str, ...] = ("cpu", "qpu"), ctx: int = DEFAULT_CTX, cache_dir: Path | None = None,
            backend_opts: dict | None = None, progress: bool = False) -> Row:
    from pimoe import compare as cmp
    from pimoe.gguf_file import GGUFFile
    from pimoe.synth import PRESETS

    if preset not in PRESETS:
        raise PimoeError(f"unknown model '{preset}' (choose {', '.join(PRESETS)})")
    if mix.upper() not in ("Q4_K_M",) and mix.upper() not in _plain_types():
        raise PimoeError(f"unknown weight mix '{mix}' (Q4_K_M or a weight type such as Q8_0, Q4_K)")
    fit = plan_fit(preset, mix, ctx, cache_dir)
    full = GGUFFile(full_model(preset, mix, cache_dir))
    params = sum(_numel(t.shape) for t in full.tensors.values())
    row = Row(model=preset, mix=mix.upper(), arch=PRESETS[preset].arch, layers_full=PRESETS[preset].n_layers,
              params=params, fit=fit)
    if not backends:
        return row
    t0 = time.perf_counter()
    path = slice_model(preset, mix, layers, cache_dir)
    result = cmp.compare(path, list(backends), n_prompt, n_gen, reps, shape=preset, backend_opts=backend_opts,
                         progress=progress)
    row.layers_run = int(_get(result, "layers_run"))
    for run in _get(result, "runs"):
        name = _get(run, "backend")
        scaled = _get(run, "scaled")
        row.tps[name] = _get(scaled, "predicted_tps")
        row.seconds_per_token[name] = _get(scaled, "predicted_seconds_per_token")
        agree = _get(run, "agreement")
        if agree is not None:
            row.same_tokens[name] = bool(_get(agree, "same_tokens")) or not _get(agree, "decisive_mismatches")
    row.run_seconds = time.perf_counter() - t0
    return row


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _plain_types() -> set[str]:
    from pimoe import quant

    return {t.name for t in quant.SUPPORTED}


def rows_from_records(paths) -> list[Row]:
    """The rows of earlier headline records (each row remembers its record), in the order given."""
    from pimoe.records import read_record

    out = []
    for p in paths:
        rec = read_record(p)
        if rec["kind"] != "headline":
            raise PimoeError(f"{p}: a '{rec['kind']}' record, not a headline record")
        out += [Row.from_json(r, source=rec.get("record_file")) for r in rec["rows"]]
    return out


QUICK = ("granite-3.0-1b-a400m", "Q4_K_M")    # the row `pimoe headline --quick` runs (the smallest model)


def headline(models=MODELS, mixes=MIXES, on_row=None, run_only=None, **kw) -> list[Row]:
    """Every (model, mix) row; run_only: the (model, mix) pairs whose speed is run (the others get the fit
    columns only)."""
    rows = []
    for m in models:
        for mix in mixes:
            opts = dict(kw)
            if run_only is not None and (m, mix.upper()) not in run_only:
                opts["backends"] = ()
            row = run_row(m, mix, **opts)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


# -- output -----------------------------------------------------------------------------------------------

def _gb(n: int) -> str:
    return f"{n / 1e9:.2f}"


def _yn(cpu: bool, qpu: bool) -> str:
    return f"{'yes' if cpu else 'no'} / {'yes' if qpu else 'no'}"


def _tps(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def table_text(rows: list[Row]) -> str:
    """The README's headline table (markdown)."""
    hybrid = any("hybrid" in r.tps for r in rows)
    ctx = rows[0].fit.ctx if rows else DEFAULT_CTX
    head = ["model", "weights", "file GB", f"KV GB (ctx {ctx})", "QPU copy GB",
            "fits 4 GB Pi 4 (CPU / QPU)", "fits 8 GB Pi 4 (CPU / QPU)",
            "CPU-only t/s (pred.)", "QPU offload t/s (pred.)"]
    if hybrid:
        head.append("CPU+QPU t/s (pred.)")
    head.append("QPU / CPU")
    if hybrid:
        head.append("CPU+QPU / CPU")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        f = r.fit
        cells = [r.model, r.mix if r.mix != "Q4_K_M" else "Q4_K_M-like", _gb(f.file_bytes), _gb(f.kv_bytes),
                 _gb(f.qpu_copy_bytes) + ("" if f.qpu_copy_fits_gpu_va else " (> 4 GiB GPU VA)"),
                 _yn(f.fits_cpu["4 GB"], f.fits_qpu["4 GB"]), _yn(f.fits_cpu["8 GB"], f.fits_qpu["8 GB"]),
                 _tps(r.tps.get("cpu")), _tps(r.tps.get("qpu"))]
        if hybrid:
            cells.append(_tps(r.tps.get("hybrid")))
        cells.append("—" if r.ratio is None else f"{r.ratio:.2f}x")
        if hybrid:
            cells.append("—" if r.hybrid_ratio is None else f"{r.hybrid_ratio:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_record(rows: list[Row], settings: dict, command: str) -> dict:
    from pimoe.records import environment

    return {"kind": "headline", "command": command, "environment": environment(), "settings": settings,
            "rows": [r.to_json() for r in rows],
            "notes": ["fit: arithmetic on the full-depth file and the QPU layout, against nominal board RAM "
                      "less a stated reserve", "t/s: PREDICTED for a Pi 4 (timing models), from a slice of "
                      "layers_run layers scaled to layers_full; nothing here ran on a Pi",
                      "CPU+QPU (hybrid): the CPU computes some of each layer's selected experts while the QPU "
                      "dispatch for the others is in flight, and a decode token's dense GEMVs (attention, output "
                      "head) are split by rows between the two as well; the DRAM the two lanes share is "
                      "pimoe.dram's 'central' scenario, an assumption until measured on a Pi"]}
