"""The DeepSpeed engine of a training worker: its config from our `training` section, the
engine with torch AdamW and our adjustments (kakugo.train.deepspeed_patches), ZeRO-3 fetch
units and the learning-rate schedule. Plain dicts and no Ray: benchmarks/gpu_train.py
builds the same engine on a GPU machine without Ray.
"""

from __future__ import annotations

import math
from typing import Any

from kakugo.train.deepspeed_patches import fp32_grad_norm, share_bf16_master_weights


def deepspeed_config(t: dict[str, Any], use_gpu: bool) -> dict[str, Any]:
    """DeepSpeed config from our `training` section (a plain dict on the workers)."""
    return {
        "train_micro_batch_size_per_gpu": t["micro_batch_size"],
        "gradient_accumulation_steps": t["gradient_accumulation_steps"],
        "gradient_clipping": t["max_grad_norm"],
        "zero_optimization": {
            "stage": t["zero_stage"],
            "stage3_gather_16bit_weights_on_model_save": True,
            "overlap_comm": use_gpu,
            "contiguous_gradients": True,
            # one worker has nothing to scatter: its reduce path without the scatter's
            # interleaving and output copies (8 bytes a parameter fewer each step)
            "reduce_scatter": t["num_workers"] > 1,
            # DeepSpeed's linear keeps a layer's gathered weights from being held for the
            # backward pass, at the host cost of an autograd Function binding its signature
            # on every call. Under activation checkpointing the first forward saves nothing,
            # so torch's own linear holds no more memory.
            "memory_efficient_linear": not t["gradient_checkpointing"],
        },
        "bf16": {"enabled": t["precision"] == "bf16",
                 # pure bf16: DeepSpeed keeps no fp32 copy of weights, gradients or states
                 **({"bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}
                    if t["master_weights"] == "bf16" else {})},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer waits for the device at every forward and every
        # step (it would log at steps_per_print); our loop measures tokens/s itself
        "timers": {"throughput": {"enabled": False}},
    }


def initialize_engine(model, optimizer, ds_config: dict[str, Any], lr_scheduler=None):
    """`deepspeed.initialize` (engine, optimizer, scheduler); a ZeRO-3 optimizer takes its
    gradient norm in fp32 (`fp32_grad_norm`) and, in pure bf16, updates the weight
    partitions in place (`share_bf16_master_weights`)."""
    import deepspeed

    engine, optimizer, _, lr_scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, config=ds_config)
    if ds_config["zero_optimization"]["stage"] == 3:
        fp32_grad_norm(optimizer)
        share_bf16_master_weights(optimizer)
    return engine, optimizer, lr_scheduler


def fetch_whole_layers(model) -> None:
    """ZeRO-3: each decoder layer becomes one fetch unit (its weights gathered together),
    instead of a fetch with its hooks for every linear layer: fewer, larger gathers and far
    less hook work on the host per step (measured in docs/benchmarks.md, gpu_train)."""
    from deepspeed.utils import set_z3_leaf_modules

    layers = model.base_model.layers
    set_z3_leaf_modules(model, [type(layers[0])])


def lr_lambda(kind: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor
