#!/usr/bin/env bash
# One command that builds, tests and benchmarks glyph_rt on a GPU: see bench/gpu_suite.py.
#   bash bench/gpu_suite.sh OUTDIR [--full | --train-serve] [--cpu-smoke] [--results] [--no-build] [--budget S]
#                                  [--pack FILE]
# $PYTHON picks the interpreter (default: the first of python3 and python that imports torch).
# Wheels in $GLYPH_RT_WHEELS (default .whl; bench/offline_wheels.sh fetches them for a machine without network)
# are installed first into a private directory put on PYTHONPATH.
set -u
cd "$(dirname "$0")/.." || exit 1
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for c in python3 python; do
    if command -v "$c" >/dev/null && "$c" -c "import torch" >/dev/null 2>&1; then py="$(command -v "$c")"; break; fi
  done
fi
[ -n "$py" ] || { echo "gpu_suite: no python3 or python here imports torch; set PYTHON" >&2; exit 2; }
wheels="${GLYPH_RT_WHEELS:-.whl}"
if ls "$wheels"/*.whl >/dev/null 2>&1; then
  site="${TMPDIR:-/tmp}/glyph_rt_site"
  if "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
       --upgrade --target "$site" "$wheels"/*.whl; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "gpu_suite: installed $(ls "$wheels"/*.whl | wc -l) wheels from $wheels into $site"
  else
    echo "gpu_suite: installing the wheels of $wheels failed; going on without them" >&2
  fi
fi
exec "$py" bench/gpu_suite.py "$@"
