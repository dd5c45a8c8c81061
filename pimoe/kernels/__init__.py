"""Block formats and CPU kernels behind pimoe.quant.

formats   GGUF block layouts and the numpy dequantizers (the checked reference)
actquant  activation quantizers: what llama.cpp's CPU backend does to x before a dot product
randblocks  valid random blocks of every supported type (synthetic models)
fused     numba fused dequantize-and-dot kernels (matvec / matmul) on the stored blocks
"""
