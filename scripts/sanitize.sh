#!/usr/bin/env bash
# Builds the extension with AddressSanitizer + UBSan (CMake option LINLY_SANITIZE) in its
# own build folder and runs the tests that drive the native code in it:
#   scripts/sanitize.sh [pytest args]        (no test paths given: the SAN_TESTS set below)
# The sanitized _C sits in an overlay copy of the package put first on the import path
# (its sitecustomize.py also drops an editable install's import redirect, so the overlay
# wins in subprocesses too). libasan is preloaded because python itself is not built with
# it; leak checking is off because CPython does not free everything at exit.
# Any ASan/UBSan report aborts the process, so a clean run is a passing pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
build=${LINLY_SAN_BUILD:-build-asan}
# The native-touching tests: kernels and quantisers, the packed matrix and file, every
# loader (corrupt files included), the decoder against transformers, batching, the
# engine, the GPU layout repacking, and the fuzz seeds and regressions (test_fuzz without
# its timed campaigns).
# Left out: the serve, CLI, training and browser tests (the same native calls through
# subprocesses and HTTP, minutes more under ASan) and test_smollm2 (a real model).
SAN_TESTS=(tests/test_kernels.py tests/test_quantize.py tests/test_packed.py tests/test_loaders.py
           tests/test_corrupt_files.py tests/test_model_hf.py tests/test_batching.py tests/test_engine.py
           tests/test_errors.py tests/test_cuda_layout.py "tests/test_fuzz.py::test_seeds_and_regressions")

mkdir -p "$build"
cmake -S . -B "$build" -DLINLY_SANITIZE=ON -DLINLY_CUDA=OFF -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v "$py")" -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" > "$build/cmake.log" \
  || { tail -30 "$build/cmake.log"; exit 1; }
cmake --build "$build" -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}" > "$build/build.log" || { tail -50 "$build/build.log"; exit 1; }

overlay=$build/overlay
rm -rf "$overlay" && mkdir -p "$overlay"
cp -r python/linly_engine "$overlay/linly_engine"
find "$overlay/linly_engine" -name '_C*.so' -delete
cp "$build"/_C*.so "$overlay/linly_engine/"
cat > "$overlay/sitecustomize.py" <<'PY'
import sys
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "ScikitBuildRedirectingFinder"]
PY

export PYTHONPATH="$PWD/$overlay${PYTHONPATH:+:$PYTHONPATH}"
# libstdc++ too: python does not link it, and without it loaded at start ASan's
# __cxa_throw interceptor finds no real __cxa_throw and aborts on the first C++ exception.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_init_order=1
# transformers imports deepspeed, whose accelerator probe pokes torch's MPS backend;
# naming the accelerator skips the probe.
export DS_ACCELERATOR=cpu
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
"$py" -c "import linly_engine._C as c, sys; assert c.__file__.startswith('$PWD/$overlay'), c.__file__; print('sanitized module:', c.__file__)"
# test paths given replace the default set; options alone (-x, -v, -k ...) add to it
paths=0; for a in "$@"; do case $a in -*) ;; *) paths=1 ;; esac; done
if [ $paths = 0 ]; then set -- "$@" "${SAN_TESTS[@]}"; fi
"$py" -m pytest -q -p no:cacheprovider "$@"
