"""Float kernels: scratch (work buffers, derived weight forms), threads (the BLAS thread control and
the kernels' worker threads), gemm (im2col + GEMM), winograd (F(2x2,3x3), NumPy-pass transforms),
winograd_gemm (F(2x2)/F(4x4)/F(6x6), every transform a GEMM), conv (the chooser)."""
