#!/usr/bin/env bash
# The GPU checks in one go, for a machine with one CUDA GPU, torch and transformers
# (DeepSpeed installed; Ray and vLLM not needed):
#   - the `gpu`-marked tests;
#   - benchmarks/gpu_train.py without and with activation checkpointing, and without the
#     packing mask (a speed reference), and with the torch_varlen kernel.
# Results land in benchmarks/results/ and are copied to RESULTS_DIR if given.
#
#     bash benchmarks/gpu_check.sh [RESULTS_DIR]
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__, \
torch.cuda.get_device_name(0))"
status=0
python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider || status=1
python3 benchmarks/gpu_train.py || status=1
python3 benchmarks/gpu_train.py --checkpointing || status=1
python3 benchmarks/gpu_train.py --unmasked || status=1
python3 benchmarks/gpu_train.py --attention torch_varlen || status=1
python3 benchmarks/gpu_train.py --attention torch_varlen --checkpointing || status=1
if [ -n "${1:-}" ]; then
  mkdir -p "$1" && cp benchmarks/results/gpu_train*.json "$1"/ 2>/dev/null
fi
exit $status
