#!/usr/bin/env bash
# One command: install (CPU torch 2.13.0 wheel), then fit, validate and attribute the embedded demo.
# Prints where the TensorBoard logs, checkpoint, correctness file, factors, scores and report are.
set -euo pipefail
cd "$(dirname "$0")"
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e ".[dev]"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
ckpt=runs/demo/checkpoints/last.ckpt
start=$(date +%s)
infra-pl fit -c configs/demo.yaml
infra-pl validate -c configs/demo.yaml --ckpt_path "$ckpt"
mid=$(date +%s)
infra-pl attribute -c configs/demo.yaml --ckpt_path "$ckpt"
end=$(date +%s)
echo "[infra-pl] demo: fit + validate $(( mid - start )) s, attribute $(( end - mid )) s, total $(( end - start )) s"
