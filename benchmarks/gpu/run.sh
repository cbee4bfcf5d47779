#!/usr/bin/env bash
# One call on a lent GPU machine (the `device` tool; it has nvcc, torch, CMake,
# scikit-build-core and pybind11 but no internet): build the engine with its CUDA part
# for this GPU, run the GPU tests, time the kernels and the 7B-shaped decode, print a
# short table after each step. Steps run in order of importance, each under a time
# limit, so that a call cut short still returns the most important numbers.
#   bash benchmarks/gpu/run.sh            (logs under $OUT, or ./gpu-out)
#   GEMM=1 bash benchmarks/gpu/run.sh     (also the GEMM at M = 16..512)
#   PROFILE=1 bash benchmarks/gpu/run.sh  (also each kernel's share of a decode step)
# Both GEMV variants run: the default (scalar half2) and LINLY_GEMV=mma (tensor cores).
# Budget: about 4 minutes (30 s build, 1 min tests, 2-3 min timings).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu-out}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/build.log" || echo "no nvidia-smi"
arch=$($py -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}{p[1]}')" 2>/dev/null || echo 90)
echo "== build (sm_$arch)"
start=$(date +%s)
# No build isolation: nothing can be fetched there, and the image has the build tools.
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) $py -m pip install --no-build-isolation --no-deps -q \
  -C cmake.define.LINLY_CUDA=ON -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$arch" \
  -C build-dir=/tmp/linly-build -C build.tool-args=-k0 . >> "$out/build.log" 2>&1 \
  || { grep -B2 -A6 "error" "$out/build.log" | head -80; exit 1; }
echo "built in $(( $(date +%s) - start )) s"
$py -c "import linly_engine as le; print(le.cuda.device_name()); assert le.cuda.is_available(), le.cuda.unavailable_reason()" || exit 1

step() {  # step LOG TAIL_LINES LIMIT_S command...
  local log=$1 lines=$2 limit=$3; shift 3
  echo "== $* (GEMV ${LINLY_GEMV:-scalar})" | tee -a "$out/$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$out/$log" | tail -"$lines"
}
tests="tests/test_cuda_layout.py tests/test_cuda_kernels.py tests/test_cuda_decoder.py"
pytest_cmd="$py -m pytest -q -p no:cacheprovider -o addopts= --timeout 300"
decode="$py benchmarks/gpu/bench_decode.py"
kernels="$py benchmarks/gpu/bench_kernels.py"
gemm=$([ -n "${GEMM:-}" ] || echo --no-gemm)
step tests.log 4 150 $pytest_cmd $tests
step decode.log 8 90 $decode --engines linly --formats q4_0,q8_0
step decode.log 8 60 $decode --engines hf
step kernels.log 30 60 $kernels --formats q4_0,q4_g128,q8_0 $gemm
LINLY_GEMV=mma step tests.log 4 120 $pytest_cmd tests/test_cuda_kernels.py tests/test_cuda_decoder.py
LINLY_GEMV=mma step decode.log 8 90 $decode --engines linly --formats q4_g128,q4_0
step decode.log 8 60 $decode --engines linly --formats f16
if [ -n "${PROFILE:-}" ]; then LINLY_PROFILE=1 step decode.log 40 90 $decode --engines linly --formats q4_0; fi
