"""Where the reference's ops run fast, with the same results: the backend picks, per op and shape, the C kernel
(csrc/kernels.c, built on first use) or torch's own path by timing both once on this CPU, and holds the precisions."""
