"""QPU assembly kernels for VideoCore VI, one file per kernel family.

Each file holds the numpy reference, the kernel versions in order of sophistication, the host
launcher, and a `__main__` that checks the kernel against numpy in the emulator.
Kernels depend only on `pimoe.qpu` (the DSL) and numpy.
"""
