"""The CUDA backend: a renderer (CUDA C strings, no CuPy), a CuPy runtime, and `cuda-emu`,
which compiles the same kernels for the host and runs them on NumPy buffers."""
