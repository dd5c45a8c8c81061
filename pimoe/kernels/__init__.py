"""Block formats and CPU kernels behind pimoe.quant.

formats    GGUF block layouts and the numpy dequantizers (the checked reference)
actquant   activation quantizers: what llama.cpp's CPU backend does to x before a dot product
randblocks valid random blocks of every supported type (synthetic models)
kquantize  simple f32 -> K-type quantizers (gguf.quants has none)
fused      numba fused dequantize-and-dot kernels on the stored blocks (LLVM vector-IR intrinsics)
dispatch   QTensor-level glue: activation preparation, expert grouping, kernel calls
"""

import os as _os

# numba's parallel kernels run on libgomp's thread pool, read at its first use. By default its idle
# threads spin between kernel calls; on a shared machine (or with more threads than free cores) the
# spinning threads take the CPU from the main thread's Python work between the calls and from other
# processes. Passive: idle pool threads sleep (a futex wake per call, ~10 us). An explicit
# OMP_WAIT_POLICY in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
