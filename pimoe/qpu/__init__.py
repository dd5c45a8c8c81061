"""pimoe's QPU toolchain for VideoCore VI (V3D 4.2): kernel DSL + assembler, disassembler, emulator."""

from pimoe.qpu.asm import AssembleError, Assembly, Register, assemble, get_label_positions, qpu
from pimoe.qpu.disasm import disassemble
from pimoe.qpu.isa import Instr, InvalidInstruction, decode, encode
from pimoe.qpu.lint import LintWarning, lint  # noqa: F401  (pimoe.qpu.lint(words): Mesa's rules as warnings)

# the emulator pulls in numba: load it on first use so `pimoe disasm` and the assembler stay light
_EMULATOR_NAMES = {"Array": "pimoe.qpu.emulator", "EmuCounters": "pimoe.qpu.emulator",
                   "EmuDriver": "pimoe.qpu.emulator", "QPUFault": "pimoe.qpu.emulator",
                   "GPUMemory": "pimoe.qpu.emulator", "CSDDispatch": "pimoe.qpu.emulator",
                   "run_csd": "pimoe.qpu.emulator", "submit_csd": "pimoe.qpu.emulator", "Job": "pimoe.qpu.emulator",
                   "EmuResult": "pimoe.qpu.emulator",
                   "open_driver": "pimoe.qpu.driver"}


def __getattr__(name):
    if name in _EMULATOR_NAMES:
        import importlib

        return getattr(importlib.import_module(_EMULATOR_NAMES[name]), name)
    raise AttributeError(f"module 'pimoe.qpu' has no attribute {name!r}")
