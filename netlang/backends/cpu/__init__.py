"""The `cpu` backend: the kernel layer's kernels rendered as C++ for the host."""
