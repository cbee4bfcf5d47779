#!/usr/bin/env bash
# One call on a lent GPU machine (the `device` tool; it has nvcc, torch, CMake,
# scikit-build-core and pybind11 but no internet): build the engine with its CUDA part
# for this GPU, run the GPU tests, time the kernels, print a short table last.
#   bash benchmarks/gpu/run.sh            (results and logs under $OUT, or ./gpu-out)
#   DECODE_ENGINES=hf bash benchmarks/gpu/run.sh   (the 7B decode with transformers only)
# Budget: about 2 minutes to build, 1-2 to test, 1-2 to time the kernels, 2-3 for decode.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu-out}
mkdir -p "$out"
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt" || echo "no nvidia-smi"
arch=$($py -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}{p[1]}')" 2>/dev/null || echo 90)
echo "== build (sm_$arch)"
start=$(date +%s)
# No build isolation: nothing can be fetched there, and the image has the build tools.
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) $py -m pip install --no-build-isolation --no-deps -q \
  -C cmake.define.LINLY_CUDA=ON -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$arch" \
  -C build-dir=/tmp/linly-build -C build.tool-args=-k0 . > "$out/build.log" 2>&1 || { grep -B2 -A6 "error" "$out/build.log" | head -80; exit 1; }
echo "built in $(( $(date +%s) - start )) s"
$py -c "import linly_engine as le; print(le.cuda.device_name()); assert le.cuda.is_available(), le.cuda.unavailable_reason()"
echo "== tests"
$py -m pytest -q -p no:cacheprovider -o addopts="" --timeout 300 \
  tests/test_cuda_layout.py tests/test_cuda_kernels.py tests/test_cuda_decoder.py ${EXTRA_TESTS:-} 2>&1 | tee "$out/tests.log" | tail -25 || true
echo "== kernels"
$py benchmarks/gpu/bench_kernels.py --json "$out/kernels.json" 2>&1 | tee "$out/kernels.log" | tail -45
echo "== decode (LLaMA-7B shape, batch 1)"
$py benchmarks/gpu/bench_decode.py --engines "${DECODE_ENGINES:-linly,hf}" --json "$out/decode.json" 2>&1 \
  | tee "$out/decode.log" | tail -20
