#!/usr/bin/env bash
# The checks that need a GPU, as one script: the `gpu` tests (CUDA backend against the
# NumPy backend) and the GPU benchmark. Results go to $OUT (or ./gpu-results).
#   bash benchmarks/gpu_checks.sh
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)" | tee -a "$OUT/device.txt"
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/backends/test_cuda.py tests/backends/test_step.py 2>&1 | tee "$OUT/gpu_tests.txt"
timeout 240 python3 benchmarks/gpu.py --steps 30 --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.txt"
