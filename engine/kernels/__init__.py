"""The float kernels the layers call; `conv.choice` picks one per layer shape (im2col + GEMM, Winograd
F(2x2)/F(4x4) or F(6,3) down the rows), and `threads`, `scratch`, `heap` and `tails` serve them all."""
