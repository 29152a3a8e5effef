"""The generation stage for a whole batch of languages, as five engine passes.

    seeds   : macro-topics for every seed, broad scenarios, prompts from context texts
    expand  : topics of every macro-topic, detailed scenarios and prompts of broad ones
    items   : prompts for the de-duplicated union of seeds/macro-topics/topics, and for
              every detailed scenario
    (prompts: one table of every prompt; the revision share of each category is marked)
    revise  : the marked prompts rewritten by the teacher
    respond : answers in the language to the final prompts (revised where marked),
              reasoning kept apart

Every pass sends the rows of all languages and all categories through the same engine
replicas (one `build_processor` per pass), so engine start-up is paid five times per
batch, not once per language and step. Outputs: `{output}/generate/{step}/language=X/`
(parquet, hive-partitioned) plus `{output}/generate/{step}/_manifest.json`. A finished
step with the same config hash is skipped; an interrupted pass resumes by row ids.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from kakugo.config import RunConfig
from kakugo.generate import requests as rq
from kakugo.generate.contexts import iter_texts, truncate_tokens
from kakugo.generate.engine_pass import run_pass
from kakugo.languages import Language, eval_data_dir
from kakugo.models import ModelSource
from kakugo.storage import Storage

log = logging.getLogger("kakugo.generate")

ROOT = "generate"
STEPS = ("seeds", "expand", "items", "prompts", "revise", "respond")
ENGINE_STEPS = ("seeds", "expand", "items", "revise", "respond")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _frame(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> pd.DataFrame:
    """Rows as a DataFrame that keeps its columns when empty (Ray shuffles need them)."""
    return pd.DataFrame.from_records(rows, columns=list(columns))


def _flat_map(dataset, fn: Callable[[dict[str, Any]], list[dict[str, Any]]],
              columns: tuple[str, ...]):
    """Like Dataset.flat_map, but a block that yields no rows keeps its schema."""
    def batch(frame: pd.DataFrame) -> pd.DataFrame:
        return _frame([out for row in frame.to_dict("records") for out in fn(row)], columns)

    return dataset.map_batches(batch, batch_format="pandas")


ITEM_COLUMNS = ("id", "language", "language_name", "seed", "specific", "system", "item", "order")


class GenerationStage:
    def __init__(self, config: RunConfig, languages: list[Language], storage: Storage):
        self.config = config
        self.languages = languages
        self.codes = [lang.flores_code for lang in languages]
        self.storage = storage
        self.digest = config.digest("teacher", "student", "generation", "seed")
        self._teacher_path: str | None = None

    # ------------------------------------------------------------------ bookkeeping
    def folder(self, step: str) -> str:
        return f"{ROOT}/{step}"

    def manifest(self, step: str) -> dict[str, Any] | None:
        return self.storage.read_json(f"{self.folder(step)}/_manifest.json", default=None)

    def is_done(self, step: str) -> bool:
        m = self.manifest(step)
        return bool(m and m.get("config_hash") == self.digest
                    and set(self.codes) <= set(m.get("languages", {})))

    def read(self, step: str):
        import ray

        ds = ray.data.read_parquet(self.storage.path(self.folder(step)),
                                   filesystem=self.storage.fs)
        codes = set(self.codes)
        return ds.filter(lambda row: row["language"] in codes)

    def teacher_path(self) -> str:
        if self._teacher_path is None:
            self._teacher_path = ModelSource.parse(self.config.teacher.model).materialize()
        return self._teacher_path

    def _language_stats(self, step: str) -> dict[str, dict[str, int]]:
        """Per-language counts, from a few small columns of the step's parquet files."""
        import pyarrow.dataset as pads

        dataset = pads.dataset(self.storage.path(self.folder(step)), format="parquet",
                               filesystem=self.storage.fs, partitioning="hive")
        wanted = [c for c in ("prompt_tokens", "completion_tokens", "error", "finish_reason")
                  if c in dataset.schema.names]
        frame = dataset.to_table(columns=["language", *wanted]).to_pandas()
        stats: dict[str, dict[str, int]] = {}
        for code in self.codes:
            group = frame[frame["language"] == code]
            entry = {"rows": len(group)}
            if wanted:
                entry.update(
                    prompt_tokens=int(group["prompt_tokens"].sum()),
                    completion_tokens=int(group["completion_tokens"].sum()),
                    errors=int((group["error"] != "").sum()),
                    unfinished=int((group["finish_reason"] != "stop").sum()),
                )
            stats[code] = entry
        return stats

    def _finish(self, step: str, started: float, started_at: str,
                extra: dict[str, Any]) -> dict[str, Any]:
        languages = self._language_stats(step)
        manifest = {"step": step, "config_hash": self.digest, "languages": languages,
                    "started": started_at, "finished": _now(),
                    "wall_seconds": round(time.monotonic() - started, 2), **extra}
        if step in ENGINE_STEPS:
            engine = self.config.teacher.engine
            devices = engine.replicas * engine.tensor_parallel_size * engine.pipeline_parallel_size
            seconds = manifest["wall_seconds"] * devices
            tokens = {c: s.get("prompt_tokens", 0) + s.get("completion_tokens", 0)
                      for c, s in languages.items()}
            total = sum(tokens.values()) or 1
            manifest["engine_seconds"] = round(seconds, 2)
            manifest["accelerator"] = engine.accelerator
            for code, s in languages.items():  # shared engines: split by tokens processed
                s["engine_seconds"] = round(seconds * tokens[code] / total, 2)
        self.storage.write_json(f"{self.folder(step)}/_manifest.json", manifest)
        for code, s in languages.items():
            log.info("  %-9s %-14s %s", step, code,
                     " ".join(f"{k}={v}" for k, v in s.items()))
        return manifest

    def _step(self, step: str, build: Callable[[], Any]) -> dict[str, Any]:
        if self.is_done(step):
            log.info("generate/%s: done earlier, skipped", step)
            return {"skipped": True}
        log.info("generate/%s: running for %s", step, ", ".join(self.codes))
        started, started_at = time.monotonic(), _now()
        dataset = build()
        if step in ENGINE_STEPS:
            extra = run_pass(dataset, self.config, self.teacher_path(), self.storage,
                             self.folder(step))
        else:  # a derived table: deterministic, so rewritten whole
            self.storage.delete(self.folder(step))
            dataset.write_parquet(self.storage.path(self.folder(step)),
                                  filesystem=self.storage.fs, partition_cols=["language"])
            extra = {}
        return self._finish(step, started, started_at, extra)

    # ------------------------------------------------------------------ steps
    def _seed_requests(self):
        import ray
        from transformers import AutoTokenizer

        ctx = self.config.generation.contexts
        data_dir = eval_data_dir(self.config.evaluation.data_dir)
        tokenizer = None
        parts = []
        for lang in self.languages:
            rows = rq.seed_requests(lang.flores_code, lang.name, self.config)
            texts = list(iter_texts(ctx.source, lang, data_dir, ctx.max_texts))
            if texts:
                if tokenizer is None:
                    student = ModelSource.parse(self.config.student.model).materialize()
                    tokenizer = AutoTokenizer.from_pretrained(student)
                texts = truncate_tokens(texts, tokenizer, ctx.max_text_tokens)
                rows.extend(rq.context_requests(lang.flores_code, lang.name, texts, self.config))
            log.info("  seeds     %-14s %d requests (%d context texts)", lang.flores_code,
                     len(rows), len(texts))
            parts.append(ray.data.from_items(rows))
        return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]

    def _expand_requests(self):
        config = self.config

        def children(row: dict[str, Any]) -> list[dict[str, Any]]:
            if row["error"] or row["finish_reason"] != "stop":
                return []
            return list(rq.child_requests(row, list(row["items"]), config))

        return _flat_map(self.read("seeds"), children, rq.REQUEST_COLUMNS)

    def _item_requests(self):
        config = self.config

        def topic_items(row: dict[str, Any]) -> list[dict[str, Any]]:
            if row["category"] != "topic" or row["error"] or row["finish_reason"] != "stop":
                return []
            depth = {"macro_topics": 1, "topics": 2}[row["step"]]
            base = {k: row[k] for k in ("language", "language_name", "seed", "specific",
                                        "system")}
            items = [{**base, "id": rq.stable_id(row["id"], i), "item": text,
                      "order": f"{depth}-{row['id']}-{i:04d}"}
                     for i, text in enumerate(row["items"])]
            if depth == 1:  # the seed itself belongs to the union too
                items.append({**base, "id": rq.stable_id(row["id"], "seed"),
                              "item": row["item"], "order": f"0-{row['id']}"})
            return items

        def union_prompts(group: pd.DataFrame) -> pd.DataFrame:
            rows = group.sort_values("order").to_dict("records")
            return _frame(list(rq.topic_prompt_requests(rows, config)), rq.REQUEST_COLUMNS)

        def detailed_children(row: dict[str, Any]) -> list[dict[str, Any]]:
            if row["step"] != "detailed_scenarios" or row["error"] or \
                    row["finish_reason"] != "stop":
                return []
            return list(rq.child_requests(row, list(row["items"]), config))

        items = _flat_map(self.read("seeds").union(self.read("expand")), topic_items,
                          ITEM_COLUMNS)
        topic_requests = items.groupby("language", num_partitions=len(self.codes)).map_groups(
            union_prompts, batch_format="pandas")
        detailed = _flat_map(self.read("expand"), detailed_children, rq.REQUEST_COLUMNS)
        return topic_requests.union(detailed)

    def _prompt_table(self):
        config = self.config
        fraction = config.generation.revision_fraction

        def mark(group: pd.DataFrame) -> pd.DataFrame:
            rows = group.sort_values("id").to_dict("records")
            return _frame(rq.mark_revisions(rows, fraction, config.seed), rq.PROMPT_COLUMNS)

        outputs = self.read("seeds").union(self.read("expand"), self.read("items"))
        prompts = _flat_map(outputs, lambda row: rq.prompt_rows(row, config), rq.PROMPT_COLUMNS)
        groups = prompts.groupby(["language", "category"], num_partitions=3 * len(self.codes))
        return groups.map_groups(mark, batch_format="pandas")

    def _revise_requests(self):
        return self.read("prompts").filter(lambda row: row["revise"]).map(rq.revise_request)

    def _respond_requests(self):
        kept = self.read("prompts").filter(lambda row: not row["revise"])
        final = kept.union(self.read("revise").map(rq.revised_prompt))
        return final.map(rq.response_request)

    # ------------------------------------------------------------------ entry
    def run(self) -> dict[str, dict[str, Any]]:
        builders = {
            "seeds": self._seed_requests,
            "expand": self._expand_requests,
            "items": self._item_requests,
            "prompts": self._prompt_table,
            "revise": self._revise_requests,
            "respond": self._respond_requests,
        }
        return {step: self._step(step, builders[step]) for step in STEPS}


def generate(config: RunConfig, languages: list[Language], storage: Storage) -> dict:
    """Run (or resume) the generation stage for a batch; returns per-step manifests."""
    return GenerationStage(config, languages, storage).run()
