"""Stage 5 on the driver: one language's SFT set -> tokenized, packed Ray Datasets ->
`TorchTrainer` (DeepSpeed ZeRO-3 in every worker) -> `{output}/{flores_code}/model/`.

Ray Train keeps its checkpoints under `{output}/train/train-{flores_code}/`; running the
same job again (same output root and name) resumes from the latest one, and a finished
language (its `train/{flores_code}/_manifest.json` with the same config hash) is skipped.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import posixpath
import time
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from kakugo import layout
from kakugo.accelerators import device_of
from kakugo.config import RunConfig
from kakugo.costs import training_devices
from kakugo.errors import TrainingDataError
from kakugo.ids import fraction_of
from kakugo.languages import Language
from kakugo.models import ModelSource, repo_id, tuned_model_name
from kakugo.storage import Storage, StorageError
from kakugo.train.data import pack, packing_efficiency, tokenize_conversation

log = logging.getLogger("kakugo.train")

PACKED_COLUMNS = ("input_ids", "labels", "position_ids", "samples", "split", "tokens")
TRAIN, VALIDATION = "train", "validation"
# How many tokenized samples are packed together (kakugo.train.data.pack, within a window).
PACK_WINDOW = 2048
CONFIG_SECTIONS = ("teacher", "student", "generation", "translation", "filters", "dataset",
                   "training", "seed")


class TokenizeAndPack:
    """Ray Data actor: SFT rows (id, messages) -> packed rows, with the student's tokenizer.
    Each row goes to the training or the validation split by its id (`is_validation`), and
    the rows of a split are packed only with each other; every packed row says its split
    and its token count."""

    def __init__(self, student_path: str, cutoff_len: int, packing: bool,
                 validation_fraction: float, seed: int):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(student_path)
        self.cutoff_len, self.packing = cutoff_len, packing
        self.validation_fraction, self.seed = validation_fraction, seed

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        splits: dict[str, list[dict[str, Any]]] = {TRAIN: [], VALIDATION: []}
        for row_id, messages in zip(batch["id"], batch["messages"], strict=True):
            turns = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
            sample = tokenize_conversation(turns, self.tokenizer, self.cutoff_len)
            if sample is not None:
                held_out = is_validation(row_id, self.validation_fraction, self.seed)
                splits[VALIDATION if held_out else TRAIN].append(sample)
        rows = []
        for split, samples in splits.items():
            if self.packing:
                packed = pack(samples, self.cutoff_len)
            else:
                packed = ({**s, "position_ids": list(range(len(s["input_ids"]))), "samples": 1}
                          for s in samples)
            rows.extend({**r, "split": split, "tokens": len(r["input_ids"])} for r in packed)
        return pd.DataFrame.from_records(rows, columns=list(PACKED_COLUMNS))


def is_validation(row_id: str, fraction: float, seed: int) -> bool:
    return fraction_of(row_id, ("validation", seed)) < fraction


@dataclass(frozen=True)
class PackedData:
    """The packed training and validation splits (materialized Ray Datasets), counted."""

    train: Any
    validation: Any
    train_rows: int
    validation_rows: int
    train_tokens: int


def prepare_data(config: RunConfig, lang: Language, storage: Storage,
                 student_path: str) -> PackedData:
    """Tokenize and pack the language's SFT rows in one pass (one tokenizer actor), then
    split the packed rows; the counts come from two small columns of the packed rows."""
    import ray
    from ray.data.expressions import col

    t = config.training
    packed = storage.ray_dataset(layout.dataset_data(lang.flores_code)).map_batches(
        TokenizeAndPack,
        fn_constructor_args=(student_path, t.cutoff_len, t.packing, t.validation_fraction,
                             config.seed),
        batch_size=PACK_WINDOW, batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5).materialize()
    counts = packed.select_columns(["split", "tokens"]).to_pandas()
    train_counts = counts[counts["split"] == TRAIN]
    return PackedData(
        train=packed.filter(expr=col("split") == TRAIN).materialize(),
        validation=packed.filter(expr=col("split") == VALIDATION).materialize(),
        train_rows=len(train_counts), validation_rows=len(counts) - len(train_counts),
        train_tokens=int(train_counts["tokens"].sum()))


def plan_steps(train_rows: int, config: RunConfig) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps): every worker takes the same number."""
    t = config.training
    per_step = t.num_workers * t.micro_batch_size * t.gradient_accumulation_steps
    per_epoch = train_rows // per_step
    if per_epoch == 0:
        raise TrainingDataError(
            f"{train_rows} packed training rows cannot fill one optimizer step of "
            f"{per_step} rows (training.num_workers x micro_batch_size x "
            "gradient_accumulation_steps); lower them or generate more data")
    total = per_epoch * t.epochs
    return per_epoch, min(total, t.max_steps) if t.max_steps else total


def train_language(config: RunConfig, lang: Language, storage: Storage, *,
                   fail_at_step: int | None = None, fault_marker: str | None = None
                   ) -> dict[str, Any]:
    """Train (or resume, or skip when done) the student for one language."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    code = lang.flores_code
    digest = config.digest(*CONFIG_SECTIONS)
    previous = layout.read_manifest(storage, layout.train_dir(code))
    if previous and previous.get("config_hash") == digest:
        if storage.is_complete(layout.tuned_model_dir(code)):
            log.info("train/%s: done earlier, skipped", code)
            return {"skipped": True, **previous}
        log.warning("train/%s: trained, but the model at %s was not exported whole: "
                    "resuming from the last checkpoint to export it again", code,
                    storage.uri(layout.tuned_model_dir(code)))
    if previous:  # finished under another config: its checkpoints must not be resumed
        storage.delete(layout.train_dir(code))
        storage.delete(layout.train_checkpoints(code))

    if not storage.list(layout.dataset_data(code)):
        raise TrainingDataError(f"no SFT dataset for {code} at "
                                f"{storage.uri(layout.dataset_data(code))}: run the dataset stage "
                                "first (kakugo generate)")
    t = config.training
    started, started_at = time.monotonic(), dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    student_path = ModelSource.parse(config.student.model).materialize()
    data = prepare_data(config, lang, storage, student_path)
    train_rows, validation_rows = data.train_rows, data.validation_rows
    per_epoch, total_steps = plan_steps(train_rows, config)
    efficiency = packing_efficiency(data.train_tokens, train_rows, t.cutoff_len)
    log.info("train/%s: %d packed rows (packing efficiency %.2f), %d validation rows, "
             "%d steps on %d workers", code, train_rows, efficiency, validation_rows,
             total_steps, t.num_workers)
    from kakugo.train.recipe import train_loop_per_worker

    fault = {"at_step": fail_at_step, "marker": fault_marker} \
        if fail_at_step is not None and fault_marker else None
    loop_config = worker_config(config, lang, storage, student_path, train_rows, per_epoch,
                                total_steps, fault)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(config),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        datasets={"train": data.train, "validation": data.validation},
        # train is split evenly; every worker reads all of validation and scores its share
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(
            name=posixpath.basename(layout.train_checkpoints(code)),
            storage_path=storage.path(posixpath.dirname(layout.train_checkpoints(code))),
            storage_filesystem=storage.fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures)),
    )
    result = trainer.fit()
    wall = time.monotonic() - started
    ran_on = device_of((result.metrics or {}).get("nodes_per_rank") or [], gpu=t.use_gpu,
                       requested=config.cluster.training_accelerator_type)
    device, devices = training_devices(config, ran_on)
    manifest = {
        "language": code, "config_hash": digest, "started": started_at,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(wall, 2), "worker_seconds": round(wall * t.num_workers, 2),
        "device": device, "device_seconds": round(wall * devices, 2),
        "train_rows": train_rows, "validation_rows": validation_rows,
        "packing_efficiency": round(efficiency, 4), "total_steps": total_steps,
        "metrics": result.metrics,
        "history": [json.loads(line) for line in
                    storage.read_text(layout.train_metrics(code)).splitlines() if line],
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "model": storage.uri(layout.tuned_model_dir(code)),
    }
    layout.write_manifest(storage, layout.train_dir(code), manifest)
    log.info("train/%s: finished in %.0f s: %s", code, wall, result.metrics)
    return manifest


def worker_config(config: RunConfig, lang: Language, storage: Storage, student_path: str,
                  train_rows: int, per_epoch: int, total_steps: int,
                  fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every training worker is given (kakugo.train.recipe.WorkerConfig, checked here
    and again on the worker), as the plain dict Ray sends."""
    from kakugo.train.recipe import WorkerConfig

    code = lang.flores_code
    return WorkerConfig(
        training=config.training, student_path=student_path,
        student_model=config.student.model, language={**asdict(lang), "tag": lang.tag},
        model_name=tuned_model_name(config, lang),
        dataset_repo=repo_id(config, lang, "dataset"),  # the model card names it
        output=storage.root,  # absolute: workers do not share the driver's cwd
        model_folder=layout.tuned_model_dir(code), metrics_path=layout.train_metrics(code),
        train_rows=train_rows, steps_per_epoch=per_epoch, total_steps=total_steps,
        fault=fault,  # tests only: a worker that dies once mid-run
    ).model_dump(mode="json")


def scaling_config(config: RunConfig):
    """The training workers' `ray.train.ScalingConfig`: CPUs, a GPU each, and the GPU type
    asked for (Ray adds `accelerator_type:<TYPE>` to each worker's request, so the
    autoscaler starts a node that has it)."""
    import ray.train

    t = config.training
    return ray.train.ScalingConfig(
        num_workers=t.num_workers, use_gpu=t.use_gpu,
        resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})},
        accelerator_type=config.cluster.training_accelerator_type if t.use_gpu else None,
        placement_strategy=t.placement_strategy)


def train(config: RunConfig, languages: list[Language], storage: Storage) -> dict:
    """Train every language of the batch, one after another. A language that fails is
    listed under "failed" with its error; the others still train."""
    out: dict[str, Any] = {"failed": {}}
    for lang in languages:
        try:
            out[lang.flores_code] = train_language(config, lang, storage)
        except StorageError:  # the output root is down: not this language's fault
            raise
        except Exception as exc:  # one language must not sink the batch
            log.exception("train/%s failed", lang.flores_code)
            out["failed"][lang.flores_code] = f"{type(exc).__name__}: {exc}"
    return out
