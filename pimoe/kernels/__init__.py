"""Block formats and CPU kernels behind pimoe.quant.

formats    GGUF block layouts and the numpy dequantizers (the checked reference)
actquant   activation quantizers: what llama.cpp's CPU backend does to x before a dot product
randblocks valid random blocks of every supported type (synthetic models)
kquantize  simple f32 -> K-type quantizers (gguf.quants has none)
fused      numba fused dequantize-and-dot kernels on the stored blocks (LLVM vector-IR intrinsics)
dispatch   QTensor-level glue: activation preparation, expert grouping, kernel calls
"""
