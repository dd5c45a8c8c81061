"""`pimoe doctor`: checks what the QPU hardware route needs (Pi model and SoC, 64-bit OS, kernel, v3d driver,
render node and its permissions, V3D identity, QPU clock, RAM, the driver route), prints each ok / missing
with the fix, then runs a self-test kernel against numpy and a short streaming test.

    pimoe doctor                   # this machine's GPU (exit 0 when the hardware route works)
    pimoe doctor --qpu virtual     # the same route over the virtual V3D device (runs anywhere)
"""

from __future__ import annotations

HELP = "check what the QPU hardware route needs, then self-test it (--qpu virtual: over the virtual device)"


def add_arguments(parser) -> None:
    parser.add_argument("--qpu", default="hw", choices=("hw", "virtual"),
                        help="the GPU (hw, default) or the virtual V3D device served by the emulator (virtual)")
    parser.add_argument("--client", default=None, choices=("pimoe", "videocore6"),
                        help="UAPI client (default $PIMOE_QPU_CLIENT or pimoe's own)")
    parser.add_argument("--stream-mb", type=float, default=4.0, help="size of the streaming test (default 4 MB)")


def main(args) -> int:
    from pimoe import doctor

    checks, works = doctor.run(args.qpu, args.client, stream_bytes=int(args.stream_mb * 1e6))
    for c in checks:
        print(c.line())
    if works:
        print(f"pimoe doctor: the QPU route --qpu {args.qpu} works")
        return 0
    missing = [c.name for c in checks if c.status == "missing" and c.required]
    print(f"pimoe doctor: the QPU route --qpu {args.qpu} does not work here: missing {', '.join(missing)}"
          + ("" if args.qpu == "virtual" else " (`pimoe doctor --qpu virtual` runs the same route over the "
                                              "virtual V3D device)"))
    return 1
