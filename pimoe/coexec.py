"""Co-execution planning: how much of a piece of work the CPU takes while the QPU does the rest, so that both
finish together.

A piece of work is `n` equal units (a decode token's k selected experts, the rows of a matrix, the tokens of a
prompt). Each lane has a stand-alone cost per unit (`LaneRates`: predicted by pimoe.cpumodel for the CPU and by
pimoe.qpu.timing from emulator counts for the QPU, or measured on a Pi) and the QPU a fixed cost per call (its
dispatches' overhead). Running n_cpu units on the CPU and n - n_cpu on the QPU at the same time takes the
`pimoe.dram.concurrent` time of the two (they share DRAM); `plan_units` tries every n_cpu and keeps the
fastest, `plan_fraction` does the same for a divisible piece (matrix rows) on a fine grid.

    rates = LaneRates(cpu_seconds=0.45e-3, cpu_bytes=1.18e6, qpu_seconds=0.52e-3, qpu_bytes=1.57e6,
                      qpu_fixed_seconds=100e-6)
    plan_units(8, rates, "central")     # Split(n_cpu=4, n_qpu=4, seconds=..., ...)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pimoe import dram
from pimoe.errors import PimoeError


@dataclass(frozen=True)
class LaneRates:
    """Stand-alone cost of ONE unit on each lane: seconds and DRAM bytes; qpu_fixed_seconds per call with any
    QPU work (dispatch overhead); cpu_fixed_seconds likewise for the CPU (0 unless measured)."""
    cpu_seconds: float
    cpu_bytes: float
    qpu_seconds: float
    qpu_bytes: float
    qpu_fixed_seconds: float = 0.0
    cpu_fixed_seconds: float = 0.0
    source: str = "predicted"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Split:
    """A planned split and its predicted time (seconds; `fraction` = CPU share of the units)."""
    n_units: float
    n_cpu: float
    seconds: float
    cpu_seconds: float
    qpu_seconds: float
    slowdown: float
    share: str

    @property
    def n_qpu(self) -> float:
        return self.n_units - self.n_cpu

    @property
    def fraction(self) -> float:
        return self.n_cpu / self.n_units if self.n_units else 0.0

    def as_dict(self) -> dict:
        return asdict(self) | {"n_qpu": self.n_qpu, "cpu_fraction": self.fraction}


def split_time(n_cpu: float, n_qpu: float, rates: LaneRates, share="central") -> Split:
    """Predicted time of n_cpu units on the CPU while n_qpu units run on the QPU."""
    if n_cpu < 0 or n_qpu < 0:
        raise PimoeError(f"split_time: negative units ({n_cpu}, {n_qpu})")
    c_s = rates.cpu_fixed_seconds + n_cpu * rates.cpu_seconds if n_cpu else 0.0
    q_s = rates.qpu_fixed_seconds + n_qpu * rates.qpu_seconds if n_qpu else 0.0
    ov = dram.concurrent(c_s, n_cpu * rates.cpu_bytes, q_s, n_qpu * rates.qpu_bytes, share)
    return Split(n_cpu + n_qpu, n_cpu, ov.seconds, ov.cpu_seconds, ov.qpu_seconds, ov.slowdown,
                 dram.scenario(share).name)


def plan_units(n: int, rates: LaneRates, share="central", allowed=None) -> Split:
    """The fastest whole-unit split of n units (n_cpu in `allowed`, default 0..n); ties go to the QPU."""
    if n < 0:
        raise PimoeError(f"plan_units: n={n}")
    choices = range(n + 1) if allowed is None else allowed
    best = None
    for c in choices:
        s = split_time(c, n - c, rates, share)
        if best is None or s.seconds < best.seconds - 1e-15:
            best = s
    return best


def plan_fraction(rates: LaneRates, share="central", steps: int = 256) -> Split:
    """The fastest CPU share of one divisible unit (e.g. a matrix: rates are of the whole matrix), on a grid
    of `steps` (matrix rows are split in multiples of 1/steps)."""
    best = None
    for i in range(steps + 1):
        f = i / steps
        s = split_time(f, 1 - f, rates, share)
        if best is None or s.seconds < best.seconds - 1e-15:
            best = s
    return best


# -- rates from the models -------------------------------------------------------------------------------

def cpu_rate(weight_bytes: float, flops: float, threads: int = 4) -> float:
    """Predicted Pi 4 CPU seconds of work that reads weight_bytes and does flops (pimoe.cpumodel)."""
    from pimoe.cpumodel import predict_cpu

    return predict_cpu(weight_bytes, flops, threads=threads).seconds


def qpu_prior_seconds(weights: float, qpu_bytes: float, instructions_per_weight: float = 2.1) -> float:
    """A first guess of one unit's QPU seconds before any dispatch was predicted: the larger of the issue
    time (lane-instructions per weight: the q4 kernels measure 2.10-2.14 in the kernel bench) and the read
    time at the timing model's read ceiling. The backend replaces it by the timing model's prediction of
    its real dispatches after the first call."""
    from pimoe.qpu.timing import PI4

    lane_instr_per_s = PI4.clock_hz * PI4.n_qpus * 16 / PI4.cycles_per_instruction
    return max(weights * instructions_per_weight / lane_instr_per_s, qpu_bytes / PI4.read_bandwidth)


def dispatch_overhead() -> float:
    from pimoe.qpu.timing import PI4

    return PI4.dispatch_overhead_s
