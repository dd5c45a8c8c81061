"""Benchmarks and the timing model's calibration: everything that measures, above the model and the
QPU toolchain (it may import qpu_kernels; pimoe.qpu never does).

    pimoe.bench.cpu          pimoe vs llama.cpp on the same GGUF (`pimoe bench cpu`)
    pimoe.bench.bandwidth    CPU read/copy/triad and QPU streaming bandwidth (`pimoe bandwidth`)
    pimoe.bench.kernels      the QPU expert kernels: instructions per weight, predicted Pi 4 GB/s
                             (`pimoe bench kernels`)
    pimoe.bench.emulator     emulated QPU instructions per second (`pimoe bench emulator`)
    pimoe.bench.calibration  the QPU timing model fitted to py-videocore6's published Pi 4 figures
                             (`python -m pimoe.bench.calibration`)
"""
