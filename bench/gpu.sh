#!/usr/bin/env bash
# GPU speed check (under 5 minutes on one CUDA card): training throughput against the tutorial
# loop and folder scoring against decode-only, with data resident on the GPU, bf16 and
# channels_last; then the GPU-marked tests. Results: bench/results/speed-cuda.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0))"
"$PY" -m bench.speed --device cuda --only train,score --n 10000
"$PY" -m pytest -q -m gpu tests
cat bench/results/speed-cuda.md
