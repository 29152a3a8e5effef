#!/usr/bin/env bash
# The GPU checks in one go, for a machine with one CUDA GPU (about 100 GiB free for the
# ZeRO-3 runs: an H200), torch and transformers (DeepSpeed installed; Ray and vLLM not
# needed):
#   - the `gpu`-marked tests;
#   - benchmarks/gpu_train.py with the torch_varlen kernel (packed samples kept apart at
#     flash speed): our ZeRO-3 step against the pure-bf16 bare loop (two steps of each
#     profiled), against a bare loop with fp32 master weights under bf16 autocast (the
#     same numerics as ours), with DeepSpeed's in-flight event cap raised (an experiment),
#     and with activation checkpointing.
# Results land in benchmarks/results/ and are copied to RESULTS_DIR if given.
#
#     bash benchmarks/gpu_check.sh [RESULTS_DIR]
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__, \
torch.cuda.get_device_name(0))"
started=$(mktemp)
status=0
step() { echo "== $* ($(date +%T))"; "$@" || status=1; }
step python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider
bench() { step python3 benchmarks/gpu_train.py --attention torch_varlen "$@"; }
bench --profile
bench --bare-master-weights
bench --inflight 8
bench --checkpointing
echo "== done ($(date +%T))"
if [ -n "${1:-}" ]; then
  mkdir -p "$1" && find benchmarks/results -name 'gpu_train*' -newer "$started" \
    -exec cp {} "$1"/ \;
fi
exit $status
