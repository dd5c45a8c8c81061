"""pimoe's QPU toolchain for VideoCore VI (V3D 4.2): kernel DSL + assembler, disassembler, emulator."""

from pimoe.qpu.asm import AssembleError, Assembly, assemble, get_label_positions, qpu
from pimoe.qpu.disasm import disassemble
from pimoe.qpu.isa import Instr, InvalidInstruction, decode, encode
from pimoe.qpu.emulator import Array, EmuCounters, EmuDriver, QPUFault
from pimoe.qpu.driver import open_driver
