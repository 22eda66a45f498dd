#!/usr/bin/env bash
# One command that builds, tests and benchmarks glyph_rt on a GPU: see bench/gpu_suite.py.
#   bash bench/gpu_suite.sh OUTDIR [--full | --train-serve] [--cpu-smoke] [--results] [--no-build] [--budget S]
# $PYTHON picks the interpreter (default: python, else python3).
set -u
cd "$(dirname "$0")/.." || exit 1
py="${PYTHON:-$(command -v python || command -v python3)}"
exec "$py" bench/gpu_suite.py "$@"
