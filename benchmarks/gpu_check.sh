#!/usr/bin/env bash
# The GPU checks in one go, for a machine with one CUDA GPU (about 100 GiB free for the
# ZeRO-3 runs: an H200), torch and transformers (DeepSpeed installed; Ray and vLLM not
# needed):
#   - the `gpu`-marked tests, and our DeepSpeed engine's tests with the engine on the GPU;
#   - benchmarks/gpu_train.py with the torch_varlen kernel (packed samples kept apart at
#     flash speed): our ZeRO-3 step against the pure-bf16 bare loop (two steps of each
#     profiled, and one more under Python stacks that names the code the GPU idles for),
#     against a bare loop with fp32 master weights under bf16 autocast (the numerics of
#     our default, training.master_weights fp32), our step in pure bf16
#     (training.master_weights bf16: the bare loop's numerics) against the pure-bf16 bare
#     loop (profiled too: benchmarks/zero3_overhead.py predicts the GPU time it adds), and
#     with activation checkpointing; experiments on our step: the other linear (our step
#     uses DeepSpeed's memory-efficient linear without activation checkpointing and
#     torch's own with it; DeepSpeed's is an autograd Function whose every call binds its
#     signature through inspect), with and without checkpointing, and DeepSpeed's
#     DeepCompile (its op needs the CUDA headers: the check prints CUDA_HOME).
# The profiled run also leaves each loop's timeline (*-trace.json.gz) next to its summary.
# Results land in benchmarks/results/; given RESULTS_DIR, the new ones are also packed into
# RESULTS_DIR/gpu_check-results.tar.gz after every step (a run cut short keeps what it
# measured). The runs go most telling first, the experiments last.
#
#     bash benchmarks/gpu_check.sh [RESULTS_DIR]
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__, \
torch.cuda.get_device_name(0))"
python3 -c "from torch.utils.cpp_extension import CUDA_HOME; print('CUDA_HOME', CUDA_HOME)"
started=$(mktemp)
status=0
pack() {
  [ -n "$results_dir" ] || return 0
  mkdir -p "$results_dir" && find benchmarks/results -name 'gpu_train*' -newer "$started" \
    -printf '%P\n' | tar czf "$results_dir/gpu_check-results.tar.gz" -C benchmarks/results -T -
}
results_dir=${1:-}
step() { echo "== $* ($(date +%T))"; "$@" || status=1; pack; }
step python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider
bench() { step python3 benchmarks/gpu_train.py --attention torch_varlen "$@"; }
bench --profile
bench --master-weights bf16 --profile
bench --bare-master-weights
bench --checkpointing
# our DeepSpeed engine's tests (master weights, linear choice, fp32 gradient norm against
# DeepSpeed's own, no device-wide waits), here with the engine on the GPU
step python3 -m pytest -q tests/unit/test_train_deepspeed.py -p no:cacheprovider
# experiments
bench --zero torch_linear='{"memory_efficient_linear": false}'
bench --checkpointing --zero efficient_linear='{"memory_efficient_linear": true}'
bench --deepcompile
echo "== done ($(date +%T))"
exit $status
