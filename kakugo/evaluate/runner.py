"""Stage 6: score the base and the tuned student of each language with lm-eval.

Models are reached over HTTP through the run's Ray Serve app (`evaluation.backend: serve`:
`local-completions` for the loglikelihood tasks, `local-chat-completions` for FLORES), or
loaded in-process with transformers (`hf`, for quick local runs). If no endpoint is given
the stage starts the app itself with the base and the tuned students, and stops it after.

Outputs, under the run's output root:
  eval/{flores_code}/{model}/{task}.json   lm-eval's results for one model and task
  eval/results.csv, eval/results.md        per language and task: base, tuned, delta
  eval/plots/{task}.png                    per-language bars of the deltas
A finished (language, model, task) is not run again. Tasks a language has no data for are
listed as missing with the reason, never scored as 0.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kakugo import serving
from kakugo.config import RunConfig
from kakugo.costs import evaluation_devices
from kakugo.evaluate.taskset import EvalTask, render
from kakugo.languages import Language
from kakugo.layout import (
    EVAL_MARKDOWN,
    EVAL_TABLE,
    eval_plot,
    read_manifest,
    result_path,
    train_dir,
    tuned_model_dir,
)
from kakugo.models import ModelSource, tuned_model_name
from kakugo.storage import Storage, StorageError

log = logging.getLogger("kakugo.evaluate")

METRICS = {"sib200": "acc", "belebele": "acc", "global_mmlu": "acc",
           "flores_en_xx": "chrfpp", "flores_xx_en": "chrfpp"}


@dataclass(frozen=True)
class EvalModel:
    name: str     # served name
    role: str     # "base" or "tuned"
    path: str     # a local directory (tokenizer; the weights for the hf backend)
    version: str  # what its results are tied to: a retrained model is evaluated again


def models_for(config: RunConfig, lang: Language, storage: Storage) -> list[EvalModel]:
    models = [EvalModel(config.student.name, "base",
                        ModelSource.parse(config.student.model).materialize(),
                        f"base {config.student.model}")]
    if serving.has_tuned_model(storage, lang):
        folder = storage.uri(tuned_model_dir(lang.flores_code))
        trained = read_manifest(storage, train_dir(lang.flores_code)) or {}
        models.append(EvalModel(tuned_model_name(config, lang), "tuned",
                                ModelSource.parse(folder).materialize(),
                                f"trained {trained.get('config_hash')} "
                                f"{trained.get('finished')}"))
    return models


# the evaluation settings that change a score (not where or how fast it is computed)
SCORING_FIELDS = ("num_fewshot", "limit", "max_gen_tokens", "repetition_penalty")


def scoring_digest(config: RunConfig) -> str:
    e = config.evaluation
    return json.dumps({f: getattr(e, f) for f in SCORING_FIELDS}, sort_keys=True)


def has_result(config: RunConfig, storage: Storage, task: EvalTask, model: EvalModel) -> bool:
    """A result of this very model, scored with these settings (one of an earlier model,
    or with other shots or limits, does not count)."""
    path = result_path(task.language, task.kind, model.name)
    if not storage.exists(path):
        return False
    result = storage.read_json(path)
    return result.get("model_version") == model.version and \
        result.get("scoring") == scoring_digest(config)


def lm_eval_model(config: RunConfig, model: EvalModel, url: str | None,
                  generation: bool) -> tuple[str, dict[str, Any]]:
    """lm-eval model type and model_args for one model and kind of task."""
    if config.evaluation.backend == "hf":
        return "hf", {"pretrained": model.path, "device": "cpu", "dtype": "float32"}
    if url is None:
        raise ValueError("evaluation.backend 'serve' needs the endpoint's URL")
    key_env = config.serving.api_key_env
    if key_env and os.environ.get(key_env):
        # lm-eval's OpenAI-style clients send $OPENAI_API_KEY as the bearer token (a key
        # in model_args would be printed with them)
        os.environ["OPENAI_API_KEY"] = os.environ[key_env]
    common = {"model": model.name, "num_concurrent": config.evaluation.concurrency,
              "max_retries": 3, "timeout": 600}
    if generation:
        return "local-chat-completions", {**common, "base_url": f"{url}/chat/completions",
                                          "tokenizer_backend": None}
    return "local-completions", {**common, "base_url": f"{url}/completions",
                                 "tokenizer": model.path, "tokenizer_backend": "huggingface",
                                 "max_length": config.serving.engine.max_model_len}


def run_lm_eval(config: RunConfig, model: EvalModel, tasks: list[EvalTask], task_dir: Path,
                url: str | None) -> dict[str, dict]:
    """lm-eval on `tasks` (all loglikelihood or all generation): task name -> results."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    generation = tasks[0].generation
    model_type, model_args = lm_eval_model(config, model, url, generation)
    started = time.monotonic()
    out = lm_eval.simple_evaluate(
        model=model_type, model_args=model_args, tasks=[t.name for t in tasks],
        num_fewshot=config.evaluation.num_fewshot, limit=config.evaluation.limit,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        apply_chat_template=generation, batch_size=1, bootstrap_iters=0,
        log_samples=generation, random_seed=config.seed, numpy_random_seed=config.seed,
        torch_random_seed=config.seed, fewshot_random_seed=config.seed)
    device, devices = evaluation_devices(config, served_on(config))
    seconds = (time.monotonic() - started) * devices / len(tasks)
    results = {}
    for t in tasks:
        result = {"task": t.name, "kind": t.kind, "language": t.language,
                  "model": model.name, "role": model.role, "lm_eval_model": model_type,
                  "model_version": model.version, "scoring": scoring_digest(config),
                  "num_fewshot": config.evaluation.num_fewshot,
                  "n_samples": out["n-samples"].get(t.name),
                  "results": out["results"][t.name],
                  "config": json.loads(json.dumps(out["configs"][t.name], default=str)),
                  "device": device, "device_seconds": round(seconds, 2)}
        if generation:
            result["decoding"] = decoding(config)
            result["examples"] = [
                {"reply": sample["resps"][0][0], "answer": sample["filtered_resps"][0],
                 "target": sample["target"]}
                for sample in out["samples"][t.name][:EXAMPLES]]
        results[t.name] = result
    return results


EXAMPLES = 5  # replies kept with a generation task's results, to see what was scored


def served_on(config: RunConfig) -> str | None:
    """The accelerator type of the run's Serve app replicas, when it runs on the connected
    cluster (None for the hf backend or an endpoint elsewhere)."""
    import ray

    from kakugo.accelerators import device_of, serve_replica_nodes

    if config.evaluation.backend != "serve" or not ray.is_initialized():
        return None
    nodes = serve_replica_nodes(serving.APP_NAME)
    return device_of(nodes, gpu=config.serving.engine.accelerator == "gpu",
                     requested=config.cluster.serving_accelerator_type) if nodes else None


def decoding(config: RunConfig) -> dict[str, Any]:
    """How every model of a run is decoded in generation tasks: the same for base and tuned
    (the request says it all, so neither model's own generation config counts)."""
    return {"sampling": "greedy", "temperature": 0.0,
            "repetition_penalty": config.evaluation.repetition_penalty,
            "max_gen_tokens": config.evaluation.max_gen_tokens,
            "reasoning": "a <think> block is removed before scoring; the answer is the "
                         "first line after it"}


def score(result: dict) -> float | None:
    """The task's headline number on a 0-100 scale."""
    metric = METRICS[result["kind"]]
    value = result["results"].get(f"{metric},none")
    if value is None:
        return None
    return round(float(value) * (100 if metric == "acc" else 1), 2)


def evaluate(config: RunConfig, languages: list[Language], storage: Storage,
             url: str | None = None) -> dict:
    """Run (or resume) the evaluation of every language; writes the table and plots."""

    started_app, ran = False, False
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="kakugo-tasks-") as tmp:
        task_dir = Path(tmp)
        tasks, missing = render(config, languages, task_dir)
        plan = {lang.flores_code: models_for(config, lang, storage) for lang in languages}
        if config.evaluation.backend == "serve" and url is None:
            url = config.evaluation.url
        pending = any(not has_result(config, storage, t, m) for t in tasks for m in plan[t.language])
        if config.evaluation.backend == "serve" and url is None and pending:
            wanted = sorted({m.name for models in plan.values() for m in models})
            served = serving.served_models(config, languages, storage, wanted)
            url, started_app = serving.start(config, served), True
        try:
            for lang in languages:
                lang_tasks = [t for t in tasks if t.language == lang.flores_code]
                try:
                    ran |= evaluate_language(config, lang_tasks, plan[lang.flores_code],
                                             task_dir, url, storage)
                except StorageError:  # the output root is down: not this language's fault
                    raise
                except Exception as exc:  # one language must not sink the batch
                    log.exception("evaluate %s failed", lang.flores_code)
                    failed[lang.flores_code] = f"{type(exc).__name__}: {exc}"
        finally:
            if started_app:
                serving.stop()
    table = results_table(config, languages, storage, missing)
    if ran or not storage.exists(EVAL_TABLE):
        write_reports(table, storage, decoding_note(config))
    return {"rows": table, "missing": {f"{k[0]}/{k[1]}": v for k, v in missing.items()},
            "failed": failed}


def evaluate_language(config: RunConfig, tasks: list[EvalTask], models: list[EvalModel],
                      task_dir: Path, url: str | None, storage: Storage) -> bool:
    """Every model of one language on its unfinished tasks; True if lm-eval ran."""
    ran = False
    for model in models:
        todo = [t for t in tasks if not has_result(config, storage, t, model)]
        for generation in (False, True):
            group = [t for t in todo if t.generation is generation]
            if not group:
                continue
            log.info("evaluate %s / %s: %s", group[0].language, model.name,
                     ", ".join(t.kind for t in group))
            ran = True
            for name, result in run_lm_eval(config, model, group, task_dir, url).items():
                task = next(t for t in group if t.name == name)
                storage.write_json(result_path(task.language, task.kind, model.name), result)
    return ran


def results_table(config: RunConfig, languages: list[Language], storage: Storage,
                  missing: dict[tuple[str, str], str]) -> list[dict]:
    rows = []
    for lang in languages:
        tuned = tuned_model_name(config, lang)
        for kind in config.evaluation.tasks:
            row = {"language": lang.flores_code, "name": lang.name, "task": kind,
                   "metric": METRICS[kind], "base": None, "tuned": None, "delta": None,
                   "note": missing.get((lang.flores_code, kind), "")}
            if not row["note"]:
                for role, model in (("base", config.student.name), ("tuned", tuned)):
                    rel = result_path(lang.flores_code, kind, model)
                    if storage.exists(rel):
                        row[role] = score(storage.read_json(rel))
                if row["tuned"] is None:
                    row["note"] = "no tuned model"
                if row["base"] is not None and row["tuned"] is not None:
                    row["delta"] = round(row["tuned"] - row["base"], 2)
            rows.append(row)
    return rows


def decoding_note(config: RunConfig) -> str:
    d = decoding(config)
    return (f"Generation tasks decode the base and the tuned student alike: {d['sampling']}, "
            f"repetition penalty {d['repetition_penalty']}, up to {d['max_gen_tokens']} new "
            f"tokens; {d['reasoning']}.")


def write_reports(rows: list[dict], storage: Storage, note: str) -> None:
    columns = ["language", "name", "task", "metric", "base", "tuned", "delta", "note"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(EVAL_TABLE, buf.getvalue())

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(
            ("n/a" if row[c] is None else (f"{row[c]:+.2f}" if c == "delta" else str(row[c])))
            for c in columns) + " |")
    storage.write_text(EVAL_MARKDOWN, "\n".join(lines) + f"\n\n{note}\n")
    for task in dict.fromkeys(r["task"] for r in rows):
        storage.write_bytes(eval_plot(task), delta_plot(
            [r for r in rows if r["task"] == task], task))


def delta_plot(rows: list[dict], task: str) -> bytes:
    """Bars of tuned - base per language; languages without a delta are labelled n/a."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(rows) + 2), 3.5))
    names = [r["language"] for r in rows]
    deltas = [r["delta"] if r["delta"] is not None else 0.0 for r in rows]
    colours = ["tab:green" if d >= 0 else "tab:red" for d in deltas]
    bars = ax.bar(names, deltas, color=colours)
    for bar, row in zip(bars, rows, strict=True):
        if row["delta"] is None:
            bar.set_alpha(0)
            ax.annotate("n/a", (bar.get_x() + bar.get_width() / 2, 0), ha="center",
                        va="bottom", fontsize=8, color="grey")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(f"tuned - base ({rows[0]['metric'] if rows else ''})")
    ax.set_title(task)
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()
