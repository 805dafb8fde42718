"""Float kernels: scratch (work buffers, derived weight forms), threads (the BLAS thread control and
the kernels' worker threads), gemm (im2col + GEMM), winograd (F(2x2,3x3)), conv (the chooser)."""
