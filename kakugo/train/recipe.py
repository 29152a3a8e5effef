"""The fine-tuning recipe every Ray Train worker runs: DeepSpeed ZeRO-3 full fine-tuning of
the student on one language's packed rows, as setup / train / save.

setup: the process group (Ray Train has made it; DeepSpeed joins it), on CPU the
  OpenMP teams kept to the training thread (kakugo.train.threads), then
  `HfDeepSpeedConfig` so that `from_pretrained` partitions the weights across ranks as they
  load (ZeRO-3), then the engine (kakugo.train.engine) with torch AdamW and a warmup +
  cosine/linear/constant schedule; a restarted worker group resumes from
  `ray.train.get_checkpoint()`.
train: every `report_every_steps` optimizer steps it reports loss, lr, the last step's
  gradient norm (before clipping), tokens/s and (at checkpoints and at the end) validation
  loss through `ray.train.report`; every `checkpoint_every_steps` it saves a DeepSpeed
  checkpoint (every rank writes its shard) and reports it.
save: the consolidated weights are gathered (a collective) and rank 0 exports the HF model
  directory with its card.

The driver (kakugo.train.trainer) hands the workers a plain dict; `WorkerConfig` validates
it into typed fields at that boundary.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from kakugo.config import TrainingConfig
from kakugo.storage import Storage
from kakugo.train.attention import TORCH_VARLEN
from kakugo.train.attention import register as register_varlen
from kakugo.train.engine import (
    deepspeed_config,
    fetch_whole_layers,
    initialize_engine,
    lr_lambda,
)
from kakugo.train.threads import keep_openmp_teams_to_this_thread

CHECKPOINT_TAG = "step"


class FaultInjection(BaseModel):
    """Tests only: the last rank's process dies once at `at_step` (the `marker` file on
    shared storage makes it once per run, not once per restart)."""

    model_config = ConfigDict(extra="forbid")
    at_step: int
    marker: str


class WorkerConfig(BaseModel):
    """What a training worker is given, validated from the dict Ray hands it."""

    model_config = ConfigDict(extra="forbid")
    training: TrainingConfig
    student_path: str  # a local directory on the worker's node
    student_model: str  # the spec the run was given (the model card names it)
    language: dict[str, Any]
    model_name: str
    dataset_repo: str
    output: str  # the output root, absolute: workers do not share the driver's cwd
    model_folder: str
    metrics_path: str
    train_rows: int
    steps_per_epoch: int
    total_steps: int
    fault: FaultInjection | None = None


def _mean_across_ranks(total, count: float, device) -> float | None:
    """sum(total) / sum(count) over all ranks; None when no rank counted anything. `total`
    may be a tensor on `device` (summed there without waiting for the GPU)."""
    import torch
    import torch.distributed as dist

    buf = torch.tensor([0.0, count], dtype=torch.float64, device=device)
    buf[0] += total
    dist.all_reduce(buf)
    return (buf[0] / buf[1]).item() if buf[1] > 0 else None


class FineTuneRecipe:
    def __init__(self, cfg: WorkerConfig):
        from kakugo.logs import kakugo_logger

        self.cfg = cfg
        self.t = cfg.training
        self.log = kakugo_logger().getChild("train")
        self.step = 0

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        import deepspeed
        import ray
        import ray.data
        import ray.train
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.integrations import HfDeepSpeedConfig

        t = self.t
        # the worker's own progress is the step lines: no Ray Data progress bars for its
        # shards (in a job's log they are repainted long after the shard is read)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        deepspeed.init_distributed(dist_backend="nccl" if t.use_gpu else "gloo")
        self.device = torch.device("cuda", ctx.get_local_rank()) if t.use_gpu \
            else torch.device("cpu")
        if t.use_gpu:
            torch.cuda.set_device(self.device)
        else:  # gloo's threads must not start OpenMP teams of their own
            keep_openmp_teams_to_this_thread()

        ds_config = deepspeed_config(t.model_dump(mode="json"), t.use_gpu)
        self.dtype = torch.bfloat16 if t.precision == "bf16" else torch.float32
        if t.attention == TORCH_VARLEN:
            register_varlen()
        self._hf_ds_config = HfDeepSpeedConfig(ds_config)  # from_pretrained reads it (ZeRO-3)
        model = AutoModelForCausalLM.from_pretrained(self.cfg.student_path, dtype=self.dtype,
                                                     attn_implementation=t.attention)
        if t.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        if t.zero_stage == 3 and t.zero3_layer_fetch:
            fetch_whole_layers(model)
        total = self.cfg.total_steps
        optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate,
                                      weight_decay=t.weight_decay, betas=(0.9, 0.999),
                                      fused=t.use_gpu)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(t.lr_scheduler, int(t.warmup_ratio * total), total))
        self.engine, _, self.scheduler = initialize_engine(model, optimizer, ds_config,
                                                           scheduler)
        local = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
                    for p in self.engine.module.parameters())
        self.params_per_rank: list[int] = [0] * self.world
        torch.distributed.all_gather_object(self.params_per_rank, local)
        self.nodes_per_rank: list[str] = [""] * self.world
        torch.distributed.all_gather_object(self.nodes_per_rank,
                                            ray.get_runtime_context().get_node_id())
        self.log.info("rank %d/%d: %d parameters held locally", self.rank, self.world, local)

        checkpoint = ray.train.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as folder:
                _, client = self.engine.load_checkpoint(folder, tag=CHECKPOINT_TAG)
            self.step = int(client["step"])
            self.log.info("rank %d: resumed from step %d", self.rank, self.step)

        self.pad_id = AutoTokenizer.from_pretrained(self.cfg.student_path).pad_token_id or 0
        self.train_shard = ray.train.get_dataset_shard("train")
        self.val_shard = ray.train.get_dataset_shard("validation")
        self.storage = Storage(self.cfg.output)
        self.history: list[dict[str, Any]] = []
        if self.rank == 0 and self.storage.exists(self.cfg.metrics_path):  # earlier attempts
            self.history = [json.loads(line) for line in
                            self.storage.read_text(self.cfg.metrics_path).splitlines() if line]

    # ------------------------------------------------------------------ pieces
    def batches(self, shard):
        """(model inputs on the device, label tokens in them); the count and the sample
        boundaries come from the host's copy, so that no step waits on the GPU for them."""
        from kakugo.train.data import IGNORE_INDEX, collate, model_inputs

        for rows in shard.iter_batches(batch_size=self.t.micro_batch_size,
                                       batch_format="numpy", prefetch_batches=2):
            items = [{k: rows[k][i] for k in ("input_ids", "labels", "position_ids")}
                     for i in range(len(rows["input_ids"]))]
            batch = collate(items, self.pad_id)
            targets = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            yield model_inputs(batch, self.dtype, self.t.attention, self.device), targets

    def forward(self, inputs):
        """Mean loss over the micro-batch's label tokens."""
        return self.engine(**inputs).loss

    def validate(self) -> float | None:
        import torch

        if self.val_shard is None:
            return None
        self.engine.eval()
        total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        own = seen = 0
        last = None
        with torch.no_grad():  # every rank reads the whole set and scores its share
            for index, (inputs, targets) in enumerate(self.batches(self.val_shard)):
                seen, last = index + 1, inputs
                if index % self.world != self.rank:
                    continue
                total += self.forward(inputs).double() * targets
                count, own = count + targets, own + 1
            # a ZeRO-3 forward gathers parameters from every rank: all ranks must run as
            # many forwards, so a rank with a smaller share repeats one and discards it
            for _ in range(-(-seen // self.world) - own):
                self.forward(last)
        self.engine.train()
        return _mean_across_ranks(total, count, self.device)

    def keep_metrics(self, metrics: dict[str, Any]) -> None:
        """Rank 0 keeps every report in `train/{code}/metrics.jsonl` (all attempts)."""
        if self.rank == 0:
            self.history.append({**metrics, "time": time.time()})
            self.storage.write_text(self.cfg.metrics_path,
                                    "".join(json.dumps(m) + "\n" for m in self.history))

    def checkpoint(self, metrics: dict[str, Any]) -> None:
        import ray.train
        from ray.train import Checkpoint

        with tempfile.TemporaryDirectory() as folder:
            self.engine.save_checkpoint(folder, tag=CHECKPOINT_TAG,
                                        client_state={"step": self.step})
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))

    def after_step(self) -> None:
        """Tests only (`WorkerConfig.fault`): the last rank dies once at the step asked for,
        a few seconds in, as a crash would (reports are collected by the Train controller
        every 2 s, and a checkpoint reported just before the crash may not be registered
        yet)."""
        fault = self.cfg.fault
        if fault and fault.at_step == self.step and self.rank == self.world - 1 and \
                not os.path.exists(fault.marker):
            with open(fault.marker, "w") as f:
                f.write(f"worker {self.rank} killed at step {self.step}\n")
            time.sleep(5)
            os._exit(1)

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        import torch

        t, engine, total_steps = self.t, self.engine, self.cfg.total_steps
        accum = t.gradient_accumulation_steps
        engine.train()
        window_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        window_targets = window_tokens = 0
        window_start = loop_started = time.monotonic()
        first_step = self.step
        micro_per_epoch = self.cfg.steps_per_epoch * accum
        done_micro = self.step * accum
        for epoch in range(t.epochs):
            if self.step >= total_steps:
                break
            for index, (inputs, targets) in enumerate(self.batches(self.train_shard)):
                if index >= micro_per_epoch or self.step >= total_steps:
                    break  # every rank stops at the same step (shards may differ by a row)
                if epoch * micro_per_epoch + index < done_micro:
                    continue  # consumed before the checkpoint we resumed from
                loss = self.forward(inputs)
                engine.backward(loss)  # DeepSpeed scales by 1/accumulation steps
                engine.step()
                window_loss += loss.detach().double() * targets
                window_targets += targets
                window_tokens += inputs["input_ids"].numel()
                if not engine.is_gradient_accumulation_boundary():
                    continue
                self.step += 1
                metrics: dict[str, Any] = {"step": self.step, "epoch": epoch}
                if self.step % t.report_every_steps == 0 or self.step == total_steps:
                    seconds = time.monotonic() - window_start
                    metrics.update(self.window_metrics(window_loss, window_targets,
                                                       window_tokens, seconds))
                    window_loss.zero_()
                    window_targets = window_tokens = 0
                    window_start = time.monotonic()
                    self.log_progress(metrics, (window_start - loop_started)
                                      / max(self.step - first_step, 1))
                self.report(metrics)
                self.after_step()

    def window_metrics(self, window_loss, targets: int, tokens: int,
                       seconds: float) -> dict[str, Any]:
        grad_norm = self.engine.get_global_grad_norm()  # a float or a 1-element tensor
        return {"loss": _mean_across_ranks(window_loss, targets, self.device),
                "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "tokens_per_second": (_mean_across_ranks(tokens, 1, self.device) or 0)
                * self.world / max(seconds, 1e-9),
                "params_per_rank": self.params_per_rank,
                "nodes_per_rank": self.nodes_per_rank}

    def log_progress(self, metrics: dict[str, Any], pace: float) -> None:
        """Rank 0: steps done, loss, ETA from this attempt's pace."""
        if self.rank == 0:
            loss = "n/a" if metrics["loss"] is None else f"{metrics['loss']:.4f}"
            self.log.info("%s step %d/%d, loss %s, ETA %.0f s",
                          self.cfg.language["flores_code"], self.step, self.cfg.total_steps,
                          loss, pace * (self.cfg.total_steps - self.step))

    def report(self, metrics: dict[str, Any]) -> None:
        """A checkpoint (with validation loss) every `checkpoint_every_steps` and at the
        end; the window's metrics at the other report steps."""
        import ray.train

        if self.step % self.t.checkpoint_every_steps == 0 or \
                self.step == self.cfg.total_steps:
            metrics["val_loss"] = self.validate()
            self.keep_metrics(metrics)
            self.checkpoint(metrics)
        elif "loss" in metrics:
            self.keep_metrics(metrics)
            ray.train.report(metrics)

    # ------------------------------------------------------------------ save
    def save(self) -> None:
        from kakugo.train.export import export_model

        engine = self.engine
        state = engine._zero3_consolidated_16bit_state_dict() if self.t.zero_stage == 3 \
            else engine.module.state_dict()
        if self.rank == 0:
            export_model(engine.module, state, self.cfg.model_dump(mode="json"))


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """Ray Train's entry point on every worker."""
    recipe = FineTuneRecipe(WorkerConfig.model_validate(cfg))
    recipe.setup()
    recipe.train()
    recipe.save()
