"""DRAM sharing: what the ARM cores and the QPUs get from the one LPDDR4 interface when both stream at once.

Alone, each side streams at its own rate: the CPU's decode at 3.35 GB/s (pimoe.cpumodel, implied by published
llama.cpp decode rates), the QPUs at up to 7.24 GB/s (py-videocore6's summation, the read ceiling of
pimoe.qpu.timing). Together they share one 32-bit LPDDR4-3200 interface, 12.8 GB/s on paper. Nobody has
published what a Pi 4 gives CPU and V3D streaming together, so the combined ceiling is an ASSUMPTION with
three values (`SCENARIOS`), each with how it was chosen:

    pessimistic  7.29 GB/s   the QPU's own read ceiling: the interface gives both together no more than the
                             faster agent alone gets (sharing adds nothing)
    central      9.41 GB/s   midway between the pessimistic and the optimistic value
    optimistic  11.52 GB/s   90 % of the 12.8 GB/s on paper (an LPDDR4 controller rarely sustains more
                             than ~90 % of its pin rate with two streams interleaving pages)

`pimoe bandwidth --concurrent` measures the combined figure on a Pi (CPU threads streaming while a QPU
summation kernel reads) and replaces the assumption by a measurement; elsewhere it prints these.

How sharing slows the two (`concurrent`): both agents are streamers with a fixed number of requests in flight
(the A72's miss buffers, the TMU's 8-deep queue per QPU), so by Little's law each one's rate is its requests in
flight / DRAM latency. While the sum of their stand-alone rates (their demands) exceeds the combined ceiling,
the latency rises for everybody alike, so both run at the same fraction s = ceiling / (sum of demands) of
their stand-alone speed; when one finishes, the other continues alone at full speed. A side whose time is
bound by compute rather than memory (its demand is bytes / its time) is slowed the same way: the model is
conservative for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pimoe import pi4
from pimoe.errors import PimoeError

DRAM_PEAK = pi4.DRAM_PEAK_BANDWIDTH   # 12.8 GB/s: LPDDR4-3200 x 32 bit (pimoe.pi4 names the source)
OPTIMISTIC_EFFICIENCY = 0.9          # ASSUMED fraction of the pin rate two interleaved streams sustain


def _qpu_read() -> float:
    from pimoe.qpu.timing import PI4

    return PI4.read_bandwidth          # fitted to py-videocore6 summation (pimoe.pi4.PYVC6_SUMMATION_BANDWIDTH)


@dataclass(frozen=True)
class DRAMShare:
    """One value of the combined CPU + QPU DRAM ceiling (bytes/s), with where it comes from."""
    name: str
    combined: float
    source: str
    measured: bool = False

    def as_dict(self) -> dict:
        return asdict(self) | {"combined_GBps": self.combined / 1e9}


def scenarios() -> dict[str, DRAMShare]:
    pess = _qpu_read()
    opt = OPTIMISTIC_EFFICIENCY * DRAM_PEAK
    return {
        "pessimistic": DRAMShare("pessimistic", pess, "ASSUMPTION: no more than the QPU's own read ceiling "
                                 "(py-videocore6 summation 7.24 GB/s, pimoe.qpu.timing.PI4.read_bandwidth)"),
        "central": DRAMShare("central", (pess + opt) / 2, "ASSUMPTION: midway between pessimistic and optimistic"),
        "optimistic": DRAMShare("optimistic", opt, "ASSUMPTION: 90 % of 12.8 GB/s (LPDDR4-3200 x 32 bit, "
                                "Pi 4 product brief)"),
    }


SCENARIO_NAMES = ("pessimistic", "central", "optimistic")


def scenario(name: str | DRAMShare | float) -> DRAMShare:
    """A scenario by name, a DRAMShare, or a measured combined bandwidth in bytes/s."""
    if isinstance(name, DRAMShare):
        return name
    if isinstance(name, (int, float)):
        if name <= 0:
            raise PimoeError(f"combined DRAM bandwidth {name} must be positive")
        return DRAMShare("measured", float(name), "measured by pimoe bandwidth --concurrent", measured=True)
    table = scenarios()
    if name not in table:
        raise PimoeError(f"DRAM sharing scenario {name!r}: choose one of {', '.join(SCENARIO_NAMES)}")
    return table[name]


@dataclass(frozen=True)
class Overlap:
    """Two lanes run from t=0 together: their finish times and the time both are done (seconds)."""
    cpu_seconds: float
    qpu_seconds: float
    slowdown: float          # the fraction s of stand-alone speed both had while overlapping (1 = no contention)

    @property
    def seconds(self) -> float:
        return max(self.cpu_seconds, self.qpu_seconds)


def concurrent(cpu_seconds: float, cpu_bytes: float, qpu_seconds: float, qpu_bytes: float,
               share: str | DRAMShare | float = "central") -> Overlap:
    """CPU work of `cpu_seconds` alone reading `cpu_bytes`, and QPU work of `qpu_seconds` alone reading
    `qpu_bytes`, started together: when does each finish (the sharing model of the module doc)."""
    for v in (cpu_seconds, cpu_bytes, qpu_seconds, qpu_bytes):
        if v < 0:
            raise PimoeError(f"concurrent(): negative time or bytes ({v})")
    B = scenario(share).combined
    if cpu_seconds == 0 or qpu_seconds == 0:
        return Overlap(cpu_seconds, qpu_seconds, 1.0)
    demand = cpu_bytes / cpu_seconds + qpu_bytes / qpu_seconds
    s = min(1.0, B / demand) if demand > 0 else 1.0
    first = min(cpu_seconds, qpu_seconds) / s          # when the shorter lane finishes
    if cpu_seconds <= qpu_seconds:
        done = first * s / qpu_seconds                 # fraction of its work the QPU did meanwhile
        return Overlap(first, first + (1 - done) * qpu_seconds, s)
    done = first * s / cpu_seconds
    return Overlap(first + (1 - done) * cpu_seconds, first, s)
