#!/usr/bin/env bash
# One device call for the training side: the Qwen2.5-VL integration tests on the machine's transformers,
# the train-step benchmark (NSA vs dense) and a 2-GPU torchrun run of the tiny recipe.
# Run from the repo root on the GPU host, with .whl/ holding pydantic and an nsa-kernels wheel (for its
# entry point) and a prepared synthetic folder:
#   bash benchmarks/gpu_train_checks.sh .gpu_data/prepared "$OUT"
set -uo pipefail
prepared="$1"
out="$2"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH="packages/nsa-core/src:packages/nsa-kernels/src:packages/data-pipeline/src:packages/training/src:.:/tmp/site"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NSA_ARTIFACT_ROOT=/tmp/artifacts
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  python3 -c "from nsa_core.ops import resolve_backend; import torch; print('auto backend on cuda:', resolve_backend('auto', torch.device('cuda'), torch.bfloat16).name)"
} 2>&1 | tee "$out/env.txt"
python3 -m pytest tests/nsa_core/models tests/nsa_core/layers -q -p no:cacheprovider 2>&1 | tail -15 | tee "$out/qwen_tests.txt"
python3 benchmarks/train_step.py --vision-tokens 8192 32768 --layers 2 --out "$out/train_step.md" 2>&1 | tail -25
torchrun --standalone --nproc-per-node 2 -m nsa_train.cli --config configs/train/tiny.yaml \
  --set "data.prepared_dir=$prepared" --set output_dir=/tmp/tiny-2gpu --set tracking.backend=none \
  --set loop.max_steps=8 --set loop.progress=false 2>&1 | tail -25 | tee "$out/torchrun_2gpu.txt"
python3 - "$out" <<'PY' 2>&1 | tee -a "$out/torchrun_2gpu.txt"
import json, sys
from pathlib import Path
losses = [json.loads(line)["loss"] for line in Path("/tmp/tiny-2gpu/metrics.jsonl").read_text().splitlines()]
print("2-GPU torchrun losses:", [round(x, 4) for x in losses])
PY
