"""The training loop that runs on every Ray Train worker: DeepSpeed ZeRO-3 full fine-tuning.

Built the way DeepSpeed and transformers expect it: the process group first (Ray Train
has already made it; DeepSpeed joins it), then `HfDeepSpeedConfig` so that
`from_pretrained` partitions the weights across ranks as they load (ZeRO-3), then
`deepspeed.initialize` with torch AdamW and a warmup + cosine/linear/constant schedule.

Every `report_every_steps` optimizer steps the loop reports loss, lr, the last step's
gradient norm (before clipping), tokens/s and (at checkpoints and at the end) validation
loss through `ray.train.report`. Every `checkpoint_every_steps` it saves a DeepSpeed
checkpoint (every rank writes its shard) and reports it; a restarted worker group resumes
from `ray.train.get_checkpoint()`. At the end the consolidated weights are gathered (a
collective) and rank 0 exports the HF model directory.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import Any

from kakugo.storage import Storage
from kakugo.train.attention import TORCH_VARLEN
from kakugo.train.attention import register as register_varlen

CHECKPOINT_TAG = "step"


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


def share_bf16_master_weights(zero3_optimizer) -> None:
    """Pure bf16 (`training.master_weights` bf16): DeepSpeed means the optimizer to update
    each sub-group's bf16 weight partition itself, but the check for it compares a
    torch.device with a device name, never equal (DeepSpeed 0.19), so it keeps a second
    bf16 copy (2 bytes a parameter) and copies it back after every step. Here each master
    copy of the weights' own dtype is made to share its partition's memory, as intended;
    torch then skips the copy back (same data). fp32 master copies are left alone."""
    flats = zip(zero3_optimizer.fp32_partitioned_groups_flat,
                zero3_optimizer.fp16_partitioned_groups_flat, strict=True)
    for master, weights in flats:
        if weights is not None and master.data_ptr() != weights.data_ptr() and \
                (master.dtype, master.device, master.shape) == \
                (weights.dtype, weights.device, weights.shape):
            master.data = weights.data


def fp32_grad_norm(zero3_optimizer) -> None:
    """DeepSpeed's ZeRO-3 step takes the gradient norm (for clipping) on fp64 copies of the
    gradient partitions: each step writes and reads 8 bytes a parameter besides reading the
    gradients (18 bytes a parameter in all, benchmarks/zero3_overhead.py). This optimizer
    takes it instead as torch's clip_grad_norm_ does: a multi-tensor kernel reads the
    gradients once and accumulates in fp32 (2 bytes a parameter for bf16 gradients). Only
    for the L2 norm over data-parallel ranks (no tensor- or expert-parallel groups); other
    calls go to DeepSpeed's own. A non-finite norm is -1, as there: the step is skipped."""
    import types

    import deepspeed.comm as dist
    import torch

    stock = zero3_optimizer.get_grad_norm_direct

    def get_grad_norm_direct(self, gradients, params, norm_type=2):
        if float(norm_type) != 2.0 or self.model_parallel_group is not None or \
                self._autoep_expert_parallel_group(params) is not None:
            return stock(gradients, params, norm_type)
        squares = torch.zeros((), dtype=torch.float32, device=self.device)
        if gradients:
            norms = torch._foreach_norm(list(gradients), 2, dtype=torch.float32)
            squares = torch.stack(norms).square().sum()
        dist.all_reduce(squares, op=dist.ReduceOp.SUM,
                        group=self._get_param_partition_group(params[0]))
        norm = squares.sqrt()
        return torch.where(norm.isfinite(), norm, torch.full_like(norm, -1.0))

    zero3_optimizer.get_grad_norm_direct = types.MethodType(get_grad_norm_direct,
                                                            zero3_optimizer)


def fetch_whole_layers(model) -> None:
    """ZeRO-3: each decoder layer becomes one fetch unit (its weights gathered together),
    instead of a fetch with its hooks for every linear layer. On one H200 (Granite-4.0-Micro
    shape, 8,000-token rows, torch_varlen) our step went from 11.9k to 14.1k tokens/s with
    it, and from 7.3k to 10.6k with activation checkpointing."""
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


def _mean_across_ranks(total, count: float, device) -> float | None:
    """sum(total) / sum(count) over all ranks; None when no rank counted anything. `total`
    may be a tensor on `device` (summed there without waiting for the GPU)."""
    import torch
    import torch.distributed as dist

    buf = torch.tensor([0.0, count], dtype=torch.float64, device=device)
    buf[0] += total
    dist.all_reduce(buf)
    return (buf[0] / buf[1]).item() if buf[1] > 0 else None


def _inject_fault(cfg: dict[str, Any], step: int, rank: int, world: int) -> None:
    """For fault tests: the last rank's process dies once at `fail_at_step` (a marker file
    on shared storage makes it once per run, not once per restart). It dies a few seconds
    in, as a crash would: reports are collected by the Train controller every 2 s, and a
    checkpoint reported just before the crash may not be registered yet."""
    marker = cfg.get("fault_marker")
    if cfg.get("fail_at_step") == step and rank == world - 1 and marker and \
            not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(f"worker {rank} killed at step {step}\n")
        time.sleep(5)
        os._exit(1)


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    import deepspeed
    import ray
    import ray.data
    import ray.train
    import torch
    from ray.train import Checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations import HfDeepSpeedConfig

    from kakugo.logs import kakugo_logger
    from kakugo.train.data import IGNORE_INDEX, collate, model_inputs
    from kakugo.train.export import export_model

    log = kakugo_logger().getChild("train")
    # the worker's own progress is the step lines below: no Ray Data progress bars for
    # its shards (in a job's log they are repainted long after the shard is read)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t = cfg["training"]
    use_gpu = t["use_gpu"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
    device = torch.device("cuda", ctx.get_local_rank()) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)

    ds_config = deepspeed_config(t, use_gpu)
    dtype = torch.bfloat16 if t["precision"] == "bf16" else torch.float32
    if t["attention"] == TORCH_VARLEN:
        register_varlen()
    keep_alive = HfDeepSpeedConfig(ds_config)  # noqa: F841 - from_pretrained reads it (ZeRO-3)
    model = AutoModelForCausalLM.from_pretrained(cfg["student_path"], dtype=dtype,
                                                 attn_implementation=t["attention"])
    if t["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if t["zero_stage"] == 3 and t["zero3_layer_fetch"]:
        fetch_whole_layers(model)
    total_steps = cfg["total_steps"]
    warmup = int(t["warmup_ratio"] * total_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t["learning_rate"],
                                  weight_decay=t["weight_decay"], betas=(0.9, 0.999),
                                  fused=use_gpu)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(t["lr_scheduler"], warmup, total_steps))
    engine, optimizer, scheduler = initialize_engine(model, optimizer, ds_config, scheduler)
    local_params = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
                       for p in engine.module.parameters())
    params_per_rank: list[int] = [0] * world
    torch.distributed.all_gather_object(params_per_rank, local_params)
    nodes_per_rank: list[str] = [""] * world
    torch.distributed.all_gather_object(nodes_per_rank, ray.get_runtime_context().get_node_id())
    log.info("rank %d/%d: %d parameters held locally", rank, world, local_params)

    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            _, client = engine.load_checkpoint(folder, tag=CHECKPOINT_TAG)
        step = int(client["step"])
        log.info("rank %d: resumed from step %d", rank, step)

    pad_id = AutoTokenizer.from_pretrained(cfg["student_path"]).pad_token_id or 0
    micro, accum = t["micro_batch_size"], t["gradient_accumulation_steps"]
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("validation")

    def batches(shard):
        """(model inputs on the device, label tokens in them); the count and the sample
        boundaries come from the host's copy, so that no step waits on the GPU for them."""
        for rows in shard.iter_batches(batch_size=micro, batch_format="numpy",
                                       prefetch_batches=2):
            items = [{k: rows[k][i] for k in ("input_ids", "labels", "position_ids")}
                     for i in range(len(rows["input_ids"]))]
            batch = collate(items, pad_id)
            targets = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            yield model_inputs(batch, dtype, t["attention"], device), targets

    def forward(inputs) -> torch.Tensor:
        """Mean loss over the micro-batch's label tokens."""
        return engine(**inputs).loss

    def validate() -> float | None:
        if val_shard is None:
            return None
        engine.eval()
        total, count = torch.zeros((), dtype=torch.float64, device=device), 0
        own = seen = 0
        last = None
        with torch.no_grad():  # every rank reads the whole set and scores its share
            for index, (inputs, targets) in enumerate(batches(val_shard)):
                seen, last = index + 1, inputs
                if index % world != rank:
                    continue
                total += forward(inputs).double() * targets
                count, own = count + targets, own + 1
            # a ZeRO-3 forward gathers parameters from every rank: all ranks must run as
            # many forwards, so a rank with a smaller share repeats one and discards it
            for _ in range(-(-seen // world) - own):
                forward(last)
        engine.train()
        return _mean_across_ranks(total, count, device)

    storage = Storage(cfg["output"])
    history: list[dict[str, Any]] = []
    if rank == 0 and storage.exists(cfg["metrics_path"]):  # earlier attempts of this run
        history = [json.loads(line) for line in
                   storage.read_text(cfg["metrics_path"]).splitlines() if line]

    def log_metrics(metrics: dict[str, Any]) -> None:
        """Rank 0 keeps every report in `train/{code}/metrics.jsonl` (all attempts)."""
        if rank == 0:
            history.append({**metrics, "time": time.time()})
            storage.write_text(cfg["metrics_path"],
                               "".join(json.dumps(m) + "\n" for m in history))

    def save(metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            engine.save_checkpoint(folder, tag=CHECKPOINT_TAG, client_state={"step": step})
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))

    engine.train()
    window_loss = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device
    window_targets = window_tokens = 0
    window_start = loop_started = time.monotonic()
    first_step = step
    micro_per_epoch = cfg["steps_per_epoch"] * accum
    done_micro = step * accum
    for epoch in range(t["epochs"]):
        if step >= total_steps:
            break
        for index, (inputs, targets) in enumerate(batches(train_shard)):
            if index >= micro_per_epoch or step >= total_steps:
                break  # every rank stops at the same step (shards may differ by a row)
            if epoch * micro_per_epoch + index < done_micro:
                continue  # consumed before the checkpoint we resumed from
            loss = forward(inputs)
            engine.backward(loss)  # DeepSpeed scales by 1/accumulation steps
            engine.step()
            window_loss += loss.detach().double() * targets
            window_targets += targets
            window_tokens += inputs["input_ids"].numel()
            if not engine.is_gradient_accumulation_boundary():
                continue
            step += 1
            metrics: dict[str, Any] = {"step": step, "epoch": epoch}
            if step % t["report_every_steps"] == 0 or step == total_steps:
                seconds = time.monotonic() - window_start
                grad_norm = engine.get_global_grad_norm()  # a float or a 1-element tensor
                metrics.update(
                    loss=_mean_across_ranks(window_loss, window_targets, device),
                    lr=scheduler.get_last_lr()[0],
                    grad_norm=None if grad_norm is None else float(grad_norm),
                    tokens_per_second=(_mean_across_ranks(window_tokens, 1, device) or 0)
                    * world / max(seconds, 1e-9),
                    params_per_rank=params_per_rank, nodes_per_rank=nodes_per_rank)
                window_loss.zero_()
                window_targets = window_tokens = 0
                window_start = time.monotonic()
                if rank == 0:  # progress: steps done, loss, ETA from this attempt's pace
                    pace = (window_start - loop_started) / max(step - first_step, 1)
                    loss = "n/a" if metrics["loss"] is None else f"{metrics['loss']:.4f}"
                    log.info("%s step %d/%d, loss %s, ETA %.0f s",
                             cfg["language"]["flores_code"], step, total_steps, loss,
                             pace * (total_steps - step))
            if step % t["checkpoint_every_steps"] == 0 or step == total_steps:
                metrics["val_loss"] = validate()
                log_metrics(metrics)
                save(metrics)
            elif "loss" in metrics:
                log_metrics(metrics)
                ray.train.report(metrics)
            _inject_fault(cfg, step, rank, world)
    state = engine._zero3_consolidated_16bit_state_dict() if t["zero_stage"] == 3 \
        else engine.module.state_dict()
    if rank == 0:
        export_model(engine.module, state, cfg)
