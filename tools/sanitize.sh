#!/usr/bin/env bash
# Builds glyph_rt._C with AddressSanitizer + UndefinedBehaviorSanitizer (C++ only) and runs the
# layout, raster, bad-input and fuzz tests against it. Any sanitizer report fails the run.
#   bash tools/sanitize.sh [pytest args...]      (default: the four test files, fuzz at its CI size)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${GLYPH_RT_SANITIZE_DIR:-$ROOT/build/sanitize}
python -c "import pybind11, cmake, ninja" 2>/dev/null || python -m pip install -q pybind11 cmake ninja
PYBIND11_DIR=$(python -c "import pybind11; print(pybind11.get_cmake_dir())")
CMAKE=$(python -c "import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, 'cmake'))")
NINJA=$(python -c "import ninja, os; print(os.path.join(ninja.BIN_DIR, 'ninja'))")
FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1"

start=$(date +%s)
rm -rf "$OUT/pkg"
mkdir -p "$OUT/cmake" "$OUT/pkg/glyph_rt"
"$CMAKE" -S "$ROOT" -B "$OUT/cmake" -G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA" -DGLYPH_RT_CUDA=OFF \
  -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS="$FLAGS" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DPython_EXECUTABLE="$(command -v python)" -Dpybind11_DIR="$PYBIND11_DIR" \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$OUT/pkg/glyph_rt" >"$OUT/cmake.log"
"$CMAKE" --build "$OUT/cmake" --parallel "${MAX_JOBS:-$(nproc)}" >>"$OUT/cmake.log"
# the package as it installs, the sanitized _C beside the sources
tar -C "$ROOT" --exclude='_C*.so' --exclude=__pycache__ -cf - glyph_rt | tar -C "$OUT/pkg" -xf -
echo "sanitized build: $(( $(date +%s) - start )) s"

export PYTHONPATH="$OUT/pkg${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export GLYPH_RT_CACHE="$OUT/cache"
export PYTHONSAFEPATH=1  # the working directory must not shadow the sanitized package
python - <<'PY'
import glyph_rt._C as c, os
assert os.environ["PYTHONPATH"].split(":")[0] in c.__file__, f"not the sanitized build: {c.__file__}"
print("testing", c.__file__)
PY
if [ $# -eq 0 ]; then
  set -- tests/test_layout.py tests/test_raster.py tests/test_bad_input.py tests/test_fuzz.py
fi
python -m pytest -q -p no:cacheprovider "$@"
