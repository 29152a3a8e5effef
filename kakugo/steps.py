"""Bookkeeping shared by the stages that run as steps over Ray Datasets (generation, and
the dataset stage).

A step writes `{output}/{root}/{step}/language=X/*.parquet` and then
`{output}/{root}/{step}/_manifest.json` (per-language counts, config hash, timestamps,
engine-seconds for engine steps). A step whose manifest has the same config hash and
covers the batch's languages is done and skipped on rerun.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from kakugo import layout
from kakugo.config import RunConfig
from kakugo.costs import teacher_devices
from kakugo.languages import Language
from kakugo.models import ModelSource
from kakugo.serving import Teacher
from kakugo.storage import Storage, StorageError

FAILED = "failed"  # finish_reason of a teacher request that was never answered


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# The types of the columns that are not strings, in the tables the stages group by
# language (prompts, items, candidates) and the requests they write.
TYPED_COLUMNS = {"specific": "bool_", "revise": "bool_", "revised": "bool_", "n": "int64",
                 "max_tokens": "int64", "prompt_tokens": "int64", "completion_tokens": "int64",
                 "reasoning_tokens": "int64", "language_id_confidence": "float64"}
UNTYPED_COLUMNS = ("meta", "items")  # nested values: no type without a value


def frame(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> pd.DataFrame:
    """Rows as a DataFrame that keeps its columns when empty, with the types the other
    blocks have: Ray's hash shuffle takes a map task's schema from its first block and
    cannot concatenate null columns with typed ones (a batch of 8 languages of the
    paper's recipe failed so at the prompts step)."""
    df = pd.DataFrame.from_records(rows, columns=list(columns))
    if df.empty:
        import pyarrow as pa

        df = df.astype({c: pd.ArrowDtype(getattr(pa, TYPED_COLUMNS.get(c, "large_string"))())
                        for c in columns if c not in UNTYPED_COLUMNS})
    return df


def flat_map(dataset, fn: Callable[[dict[str, Any]], list[dict[str, Any]]],
              columns: tuple[str, ...]):
    """Like Dataset.flat_map, but a block that yields no rows keeps its schema."""
    def batch(block: pd.DataFrame) -> pd.DataFrame:
        return frame([out for row in block.to_dict("records") for out in fn(row)], columns)

    return dataset.map_batches(batch, batch_format="pandas")


STATS_BATCH_ROWS = 65_536


def step_stats(storage: Storage, folder: str, codes: list[str] | tuple[str, ...] = ()
               ) -> tuple[dict[str, dict[str, Any]], str]:
    """Per-language counts of a step's rows, from a few small columns of its parquet files
    read once, batch by batch (memory flat in the rows): rows, categories, and for engine
    passes tokens (prompt, completion, and of the completion the reasoning trace's),
    errors, unfinished and failed (never answered) requests. Languages in `codes` are
    there even without rows. Also the first failed request's error ("" if none)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    totals: dict[str, dict[str, Any]] = {code: {"rows": 0} for code in codes}
    first = ""
    if not storage.list(folder, recursive=True):
        return totals, first
    dataset = pads.dataset(storage.path(folder), format="parquet", filesystem=storage.fs,
                           partitioning="hive")
    wanted = [c for c in ("category", "prompt_tokens", "completion_tokens",
                          "reasoning_tokens", "error", "finish_reason")
              if c in dataset.schema.names]
    passes = "prompt_tokens" in wanted
    for batch in dataset.to_batches(columns=["language", *wanted],
                                    batch_size=STATS_BATCH_ROWS):
        table = pa.Table.from_batches([batch]).cast(pa.schema([
            pa.field(f.name, pa.string() if pa.types.is_dictionary(f.type) else f.type)
            for f in batch.schema]))
        sums = [("language", "count")]
        if passes:
            failed = pc.equal(table["finish_reason"], FAILED)
            table = table.append_column("errors", pc.cast(pc.not_equal(table["error"], ""),
                                                          pa.int64()))
            table = table.append_column("unfinished", pc.cast(
                pc.not_equal(table["finish_reason"], "stop"), pa.int64()))
            table = table.append_column("failed", pc.cast(failed, pa.int64()))
            if "reasoning_tokens" not in wanted:  # outputs written before they were counted
                table = table.append_column("reasoning_tokens",
                                            pa.array([0] * len(table), pa.int64()))
            sums += [(c, "sum") for c in ("prompt_tokens", "completion_tokens",
                                          "reasoning_tokens", "errors", "unfinished",
                                          "failed")]
            if not first and pc.any(failed).as_py():
                first = str(table.filter(failed)["error"][0])
        for row in table.group_by("language").aggregate(sums).to_pylist():
            entry = totals.setdefault(row["language"], {"rows": 0})
            entry["rows"] += row["language_count"]
            for column, _ in sums[1:]:
                key = column
                entry[key] = entry.get(key, 0) + int(row[f"{column}_sum"])
        if "category" in wanted:
            for row in table.group_by(["language", "category"]).aggregate(
                    [("category", "count")]).to_pylist():
                categories = totals[row["language"]].setdefault("categories", {})
                categories[row["category"]] = (categories.get(row["category"], 0)
                                               + row["category_count"])
    for entry in totals.values():
        if "category" in wanted:
            entry["categories"] = dict(sorted(entry.get("categories", {}).items()))
        if passes:
            for key in ("prompt_tokens", "completion_tokens", "reasoning_tokens", "errors",
                        "unfinished", "failed"):
                entry.setdefault(key, 0)
    order = [*codes, *sorted(set(totals) - set(codes))]
    return {code: totals[code] for code in order}, first


class Stage:
    """Steps run in order; each one skipped when done, its manifest written when finished."""

    root: str
    steps: tuple[str, ...]
    engine_steps: tuple[str, ...] = ()
    config_sections: tuple[str, ...]

    def __init__(self, config: RunConfig, languages: list[Language], storage: Storage):
        self.config = config
        self.languages = languages
        self.codes = [lang.flores_code for lang in languages]
        self.storage = storage
        self.digest = config.digest(*self.config_sections)
        self.log = logging.getLogger(f"kakugo.{self.root}")  # kakugo.generate, kakugo.dataset
        self._teacher_path: str | None = None
        self._teacher: Teacher | None = None

    def keep(self, languages: list[Language]) -> None:
        """Run the stage for these languages only (the others failed before it started)."""
        self.languages = languages
        self.codes = [lang.flores_code for lang in languages]

    # ------------------------------------------------------------------ bookkeeping
    def folder(self, step: str) -> str:
        return layout.step_folder(self.root, step)

    def manifest(self, step: str) -> dict[str, Any] | None:
        return layout.read_manifest(self.storage, self.folder(step))

    def missing(self, step: str) -> list[Language]:
        """The batch's languages this step has not done with this stage's config: all of
        them when the config changed, the new ones when the batch grew."""
        m = self.manifest(step)
        if not m or m.get("config_hash") != self.digest:
            return list(self.languages)
        done = set(m.get("languages", {}))
        return [lang for lang in self.languages if lang.flores_code not in done]

    def is_done(self, step: str) -> bool:
        m = self.manifest(step)
        return bool(m and m.get("config_hash") == self.digest) and not self.missing(step)

    def read(self, step: str, root: str | None = None):
        """A step's rows for this batch's languages (by default a step of this stage).

        The languages are chosen with an expression, not a Python predicate: Ray Data
        then reads only their `language=` folders (a row function reads every row of
        the step and calls Python once per row)."""
        from ray.data.expressions import col

        folder = f"{root}/{step}" if root else self.folder(step)
        if not self.codes:
            raise ValueError(f"{self.root}: reading {folder} for no languages (the batch "
                             "has none left): there is nothing to read")
        return self.storage.ray_dataset(folder).filter(
            expr=col("language").is_in(sorted(self.codes)))

    def teacher_path(self) -> str:
        if self._teacher_path is None:
            self._teacher_path = ModelSource.parse(self.config.teacher.model).materialize()
        return self._teacher_path

    def _finish(self, step: str, started: float, started_at: str, extra: dict[str, Any],
                languages: dict[str, dict[str, Any]] | None = None,
                earlier: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Write the step's manifest: this run's languages with their counts and
        device-seconds, beside the ones done `earlier` with the same config."""
        if languages is None:  # this run's languages (the folder holds the earlier ones too)
            stats = step_stats(self.storage, self.folder(step), self.codes)[0]
            languages = {code: stats[code] for code in self.codes}
        manifest = {"step": step, "config_hash": self.digest,
                    "languages": {**(earlier or {}), **languages},
                    "started": started_at, "finished": now(),
                    "wall_seconds": round(time.monotonic() - started, 2), **extra}
        # device-seconds for the cost ledger: engine steps hold the teacher's replicas (on
        # the devices they ran on) and split them by tokens processed; the other steps are
        # CPU work split by rows
        if step in self.engine_steps:
            device, per_replica = teacher_devices(self.config, extra.get("device"))
            seconds = extra.get("replica_seconds", 0.0) * per_replica
            shares = {c: s.get("prompt_tokens", 0) + s.get("completion_tokens", 0)
                      for c, s in languages.items()}
        else:
            device, seconds = "CPU", manifest["wall_seconds"]
            shares = {c: s.get("rows", 0) for c, s in languages.items()}
        total = sum(shares.values()) or 1
        manifest.update(device=device, device_seconds=round(seconds, 2))
        if step in self.engine_steps:
            manifest["engine_seconds"] = manifest["device_seconds"]
        for code, s in languages.items():
            s["device_seconds"] = round(seconds * shares[code] / total, 2)
            if step in self.engine_steps:
                s["engine_seconds"] = s["device_seconds"]
        layout.write_manifest(self.storage, self.folder(step), manifest)
        self.log.info("%s/%s: finished in %.0f s", self.root, step, manifest["wall_seconds"])
        for code, s in languages.items():
            self.log.info("  %-9s %-14s %s", step, code,
                     " ".join(f"{k}={v}" for k, v in s.items()))
        return manifest

    def _step(self, step: str, build: Callable[[], Any]) -> dict[str, Any]:
        """Run one step for the languages it has not done (none: skipped). `build` returns
        a Ray Dataset (engine requests, or a derived table written under the step's
        folder) or, for a step that writes its own outputs, the per-language stats for the
        manifest. The languages done earlier with this config are left as they are."""
        if self.is_done(step):
            self.log.info("%s/%s: done earlier, skipped", self.root, step)
            return {"skipped": True}
        todo = self.missing(step)
        earlier = None
        if len(todo) < len(self.languages):  # the batch grew: the others are done
            earlier = (self.manifest(step) or {}).get("languages", {})
        batch = self.languages
        self.keep(todo)
        try:
            return self._run_step(step, build, earlier)
        finally:
            self.keep(batch)

    def _run_step(self, step: str, build: Callable[[], Any],
                  earlier: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
        self.log.info("%s/%s (step %d of %d): running for %s", self.root, step,
                      self.steps.index(step) + 1, len(self.steps), ", ".join(self.codes))
        started, started_at = time.monotonic(), now()
        try:
            dataset = build()
            if isinstance(dataset, dict):
                return self._finish(step, started, started_at, {}, dataset, earlier)
            languages = None
            if step in self.engine_steps:
                extra = self.engine_pass(dataset, step)
                stats = extra.pop("languages")
                languages = {code: stats[code] for code in self.codes}
            else:  # a derived table: deterministic, so its languages are rewritten whole
                if earlier is None:
                    self.storage.delete(self.folder(step))
                for code in self.codes:
                    self.storage.delete(f"{self.folder(step)}/language={code}")
                dataset.write_parquet(self.storage.path(self.folder(step)),
                                      filesystem=self.storage.fs, partition_cols=["language"])
                extra = {}
        except StorageError:
            raise
        except Exception as exc:
            self._raise_if_storage_is_down(step, exc)
            raise
        return self._finish(step, started, started_at, extra, languages, earlier)

    def engine_pass(self, requests, step: str) -> dict[str, Any]:
        """Send an engine step's requests to the teacher and write the replies; the pass's
        counts with per-language stats under "languages" (stages with engine steps)."""
        raise NotImplementedError(f"{type(self).__name__} has no engine steps")

    def _raise_if_storage_is_down(self, step: str, exc: Exception) -> None:
        """A step that failed while the output root is unreachable (Ray Data's readers and
        writers report it in their own words) fails with a StorageError saying so."""
        try:
            self.storage.check_writable()
        except StorageError as down:
            raise StorageError(
                f"{self.root}/{step}: the output root {self.storage.root} is unreachable "
                f"({down}); the step stopped with {type(exc).__name__}. What was written "
                "before is kept: rerun once the storage is back to resume here") from exc

    def run(self) -> dict[str, dict[str, Any]]:
        """Every step in order; the teacher is deployed once if any engine step is left."""
        builders = {step: getattr(self, f"build_{step}") for step in self.steps}
        if all(self.is_done(step) for step in self.engine_steps):
            return {step: self._step(step, builders[step]) for step in self.steps}
        with self.make_teacher() as self._teacher:
            return {step: self._step(step, builders[step]) for step in self.steps}

    def make_teacher(self) -> Teacher:
        """The teacher the engine steps send their requests to."""
        return Teacher(self.config)
