"""Where everything of a run lives under its output root: the one place that spells a path.

    run.json, status.json, report.json, report.md     the run, its failures, its report
    generate/{step}/                                   stages 1-3: teacher passes (parquet)
    dataset/candidates/, dataset/sft/_manifest.json    stage 4: candidates, the sets' stats
    {flores_code}/dataset/                             stage 4: the language's SFT set
    train/{flores_code}/                               stage 5: manifest, metrics.jsonl
    {flores_code}/model/                               stage 5: the exported tuned student
    eval/{flores_code}/{model}/{task}.json             stage 6: one lm-eval result
    eval/results.csv, eval/results.md, eval/plots/     stage 6: the tables and plots

Every step folder and every training folder holds a `_manifest.json` (see `manifest`):
stages write them, and costs, report, results and publish read them, through here.
Stages and the orchestrator ask this module; none of them spells a path. (Output roots
written before stage 4 had this name kept it under assemble/: there the stage is redone
from the generated rows, into the same SFT sets, and nothing else.)
"""

from __future__ import annotations

from typing import Any

RUN_MANIFEST = "run.json"
STATUS = "status.json"  # languages that failed, with the stage and the error
REPORT_JSON = "report.json"
REPORT_MD = "report.md"

GENERATE = "generate"
DATASET = "dataset"
# stages 1-3, in order; the engine steps send requests to the teacher
GENERATE_STEPS = ("seeds", "expand", "items", "prompts", "revise", "respond")
ENGINE_STEPS = ("seeds", "expand", "items", "revise", "respond")
# stage 4: every candidate row with its verdicts, then the languages' SFT sets
DATASET_STEPS = ("candidates", "sft")

DATASET_MANIFEST = f"{DATASET}/sft/_manifest.json"  # stage 4's per-language stats
EVAL_TABLE = "eval/results.csv"
EVAL_MARKDOWN = "eval/results.md"
MANIFEST = "_manifest.json"


def step_folder(stage: str, step: str) -> str:
    """A step's parquet folder: generate/{step} or dataset/{step}."""
    return f"{stage}/{step}"


def context_texts(code: str) -> str:
    """A language's context texts as generation read them (the seeds step's input)."""
    return f"{GENERATE}/inputs/contexts/language={code}/texts.parquet"


def manifest(folder: str) -> str:
    """The manifest of a step folder or a training folder."""
    return f"{folder}/{MANIFEST}"


# What every manifest holds, whoever writes it (stage steps, training): the config hash that
# decides whether the work is done, when and how long, and the device it ran on with its
# device-seconds (what the cost ledger prices). Each adds its own counts.
MANIFEST_FIELDS = ("config_hash", "started", "finished", "wall_seconds", "device",
                   "device_seconds")


def write_manifest(storage: Any, folder: str, fields: dict[str, Any]) -> None:
    """Write a step's or a training's manifest; one without the common fields is a bug."""
    missing = [k for k in MANIFEST_FIELDS if k not in fields]
    if missing:
        raise ValueError(f"{folder}: a manifest needs {', '.join(missing)}")
    storage.write_json(manifest(folder), fields)


def read_manifest(storage: Any, folder: str) -> dict[str, Any] | None:
    return storage.read_json(manifest(folder), default=None)


def dataset_dir(flores_code: str) -> str:
    """Where a language's SFT set is written (data/, validation/, card, dataset_info)."""
    return f"{flores_code}/dataset"


def dataset_data(flores_code: str) -> str:
    """The training rows of a language's SFT set (parquet)."""
    return f"{dataset_dir(flores_code)}/data"


def train_dir(flores_code: str) -> str:
    """A language's training manifest and metrics."""
    return f"train/{flores_code}"


def train_metrics(flores_code: str) -> str:
    return f"{train_dir(flores_code)}/metrics.jsonl"


def train_checkpoints(flores_code: str) -> str:
    """Ray Train's run folder (checkpoints) of a language, under train/."""
    return f"train/train-{flores_code}"


def tuned_model_dir(flores_code: str) -> str:
    """Where training exports a language's model."""
    return f"{flores_code}/model"


def eval_dir(flores_code: str) -> str:
    return f"eval/{flores_code}"


def result_path(flores_code: str, task: str, model: str) -> str:
    """One model's lm-eval results for one task of one language."""
    return f"{eval_dir(flores_code)}/{model}/{task}.json"


def eval_plot(task: str) -> str:
    return f"eval/plots/{task}.png"


def stage_manifest_folders(codes: list[str]) -> list[str]:
    """Every folder whose manifest the report and the ledger read."""
    return ([step_folder(GENERATE, s) for s in GENERATE_STEPS]
            + [step_folder(DATASET, s) for s in DATASET_STEPS]
            + [train_dir(code) for code in codes])


def read_manifests(storage: Any, codes: list[str]) -> dict[str, dict[str, Any]]:
    """Every manifest a run's report and ledger read, each read once, keyed by folder
    ("generate/{step}", "dataset/{step}", "train/{code}"; {} where none was written)."""
    return {folder: read_manifest(storage, folder) or {}
            for folder in stage_manifest_folders(codes)}


def result_files(storage: Any, flores_code: str) -> list[str]:
    """Every result written for one language (any model, any task)."""
    return [name for name in storage.list(eval_dir(flores_code), recursive=True)
            if name.endswith(".json")]
