#!/usr/bin/env bash
# One command: install (CPU torch 2.13.0 wheel), then fit and validate the embedded demo.
# Prints where the TensorBoard logs, the checkpoint and the per-example correctness file are.
set -euo pipefail
cd "$(dirname "$0")"
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e ".[dev]"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
start=$(date +%s)
infra-pl fit -c configs/demo.yaml
infra-pl validate -c configs/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt
echo "[infra-pl] demo fit + validate took $(( $(date +%s) - start )) s"
