"""The cost ledger: device-seconds per stage and language, priced per device-hour.

Every stage records, in its manifests (kakugo.layout), the device type it ran on (the accelerator type of
the nodes that held its work, see kakugo.accelerators; "CPU" without GPUs) and
device-seconds (seconds x devices held):
  generate   generate/{step}/_manifest.json   engine steps: replica-seconds x GPUs per engine
                                              (split over languages by tokens processed)
  dataset    dataset/{step}/_manifest.json    CPU work, split over languages by rows
  train      train/{code}/_manifest.json      workers x GPUs per worker
  evaluate   eval/{code}/{model}/{task}.json  one engine per model while lm-eval runs
`ledger` reads them back and prices them with `cluster.price_per_hour`.
"""

from __future__ import annotations

from typing import Any

from kakugo import layout
from kakugo.config import EngineConfig, RunConfig
from kakugo.languages import Language
from kakugo.storage import Storage

# The paper's own figure: under $50 of compute per language, end to end.
PAPER_USD_PER_LANGUAGE = 50.0
LEDGER_STAGES = ("generate", "dataset", "train", "evaluate")


def engine_devices(engine: EngineConfig, ran_on: str | None,
                   requested: str | None) -> tuple[str, float]:
    """(device type, devices one engine holds): the GPU type it ran on (else the one it
    asked for, else "GPU") times its tensor x pipeline ranks, or its CPU bundle."""
    if engine.accelerator == "gpu":
        return ran_on or requested or "GPU", float(engine.tensor_parallel_size
                                                  * engine.pipeline_parallel_size)
    return "CPU", engine.cpus_per_engine


def teacher_devices(config: RunConfig, ran_on: str | None = None) -> tuple[str, float]:
    """Device type and devices held by one teacher replica."""
    return engine_devices(config.teacher.engine, ran_on, config.cluster.teacher_accelerator_type)


def training_devices(config: RunConfig, ran_on: str | None = None) -> tuple[str, float]:
    t = config.training
    if t.use_gpu:
        return ran_on or config.cluster.training_accelerator_type or "GPU", float(t.num_workers)
    return "CPU", t.num_workers * t.cpus_per_worker


def evaluation_devices(config: RunConfig, ran_on: str | None = None) -> tuple[str, float]:
    """One model at a time: one serving engine, or the driver's CPU for the hf backend."""
    if config.evaluation.backend == "hf":
        return "CPU", 1.0
    return engine_devices(config.serving.engine, ran_on, config.cluster.serving_accelerator_type)


def _entry(config: RunConfig, code: str, stage: str, device: str, seconds: float) -> dict:
    """A ledger entry; a device without a price in cluster.price_per_hour is priced as a
    "GPU" (and says so), so that no stage's time goes uncounted."""
    prices = config.cluster.price_per_hour
    priced_as = device if device in prices else ("GPU" if device != "CPU" else "CPU")
    entry = {"language": code, "stage": stage, "device": device,
             "device_seconds": round(seconds, 2),
             "usd": round(seconds / 3600 * prices.get(priced_as, 0.0), 4)}
    if priced_as != device:
        entry["priced_as"] = priced_as
    return entry


def ledger(config: RunConfig, languages: list[Language], storage: Storage,
           manifests: dict[str, dict[str, Any]] | None = None) -> list[dict]:
    """One entry per (language, stage, device type) that has recorded device-seconds
    (`manifests` from layout.read_manifests, read here when not given)."""
    codes = [lang.flores_code for lang in languages]
    if manifests is None:
        manifests = layout.read_manifests(storage, codes)
    seconds: dict[tuple[str, str, str], float] = {}

    def add(code: str, stage: str, device: str | None, value: float | None) -> None:
        if code in codes and device and value:
            key = (code, stage, device)
            seconds[key] = seconds.get(key, 0.0) + float(value)

    for folder, manifest in manifests.items():
        root = folder.split("/", 1)[0]
        if root in (layout.GENERATE, layout.DATASET):
            stage = "generate" if root == layout.GENERATE else "dataset"
            for code, entry in manifest.get("languages", {}).items():
                add(code, stage, manifest.get("device"), entry.get("device_seconds"))
    for code in codes:
        manifest = manifests.get(layout.train_dir(code), {})
        add(code, "train", manifest.get("device"), manifest.get("device_seconds"))
        for rel in layout.result_files(storage, code):
            result = storage.read_json(rel)
            add(code, "evaluate", result.get("device"), result.get("device_seconds"))
    return [_entry(config, code, stage, device, value)
            for (code, stage, device), value in sorted(seconds.items())]


def usd_by_stage(entries: list[dict[str, Any]], code: str) -> dict[str, float]:
    """$ per stage for one language, plus the total."""
    out = {stage: 0.0 for stage in LEDGER_STAGES}
    for e in entries:
        if e["language"] == code:
            out[e["stage"]] += e["usd"]
    out["total"] = sum(out.values())
    return {k: round(v, 4) for k, v in out.items()}
