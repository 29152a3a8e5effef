"""One engine pass: a Ray Dataset of request rows through the teacher's vLLM engines.

The teacher runs as one Ray Serve LLM deployment (`Teacher`: vLLM engine replicas placed
and sized from `teacher.engine`), started once for all the engine passes of a stage, so
the model loads once per stage and not once per pass. Each pass is a Ray Data LLM
processor (`ServeDeploymentProcessorConfig`) that streams chat requests to it. Every row
of the pass (any language, any category, any call type) goes through the same replicas.
List calls (n > 0) are constrained to the count-exact JSON schema, so every finished
reply parses. Output rows keep every request column and add: text (the answer),
reasoning (the trace), items, finish_reason, prompt_tokens, completion_tokens (trace and
answer), reasoning_tokens, error.

Resume: the pass writes a parquet file under its folder as each batch of
`teacher.engine.batch_size` requests is answered; a rerun reads the ids already written
and sends only the missing rows to the engines.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from typing import Any, Self

from kakugo.config import RunConfig, SamplingConfig
from kakugo.errors import TeacherPassError
from kakugo.generate.reasoning import split_think_tags
from kakugo.generate.requests import REQUEST_COLUMNS
from kakugo.models import model_tokenizer
from kakugo.prompts import list_schema
from kakugo.serving import TEACHER_APP, Teacher
from kakugo.steps import FAILED, TYPED_COLUMNS, step_stats
from kakugo.storage import Storage
from kakugo.teacher import reasoning_parser

log = logging.getLogger("kakugo.generate")

ROW_ID = "kakugo_row_id"
OUTPUT_COLUMNS = ("text", "reasoning", "items", "finish_reason", "prompt_tokens",
                  "completion_tokens", "reasoning_tokens", "error")


def reply_token_limit(row: dict[str, Any], config: RunConfig) -> int:
    """max_tokens of a request: its own, else the list or the free-text default. List
    calls and translations (schema-constrained replies) get `reasoning_max_tokens` more
    for the trace when the teacher has a reasoning parser: vLLM then applies the schema
    only after the trace (without one the schema holds from the first token, so there is
    no trace to budget)."""
    sampling: SamplingConfig = config.teacher.sampling
    constrained = row["n"] > 0 or bool(row["schema"])
    if row["max_tokens"]:
        limit = int(row["max_tokens"])
    else:
        limit = sampling.list_max_tokens if row["n"] > 0 else sampling.max_tokens
    if constrained and reasoning_parser(config.teacher):
        limit += sampling.reasoning_max_tokens
    return limit


class Preprocess:
    """Request row -> a chat request for the teacher deployment (list calls get the schema)."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.template_kwargs = teacher_template_kwargs(config)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        s = self.config.teacher.sampling
        schema = row["schema"] or (
            json.dumps(list_schema(int(row["n"]), s.list_item_max_chars)) if row["n"] > 0 else "")
        request = {
            "model": self.config.teacher.name,
            "messages": [{"role": "system", "content": row["system"]},
                         {"role": "user", "content": row["user"]}],
            "max_tokens": reply_token_limit(row, self.config),
            "temperature": s.temperature, "top_p": s.top_p,
            "repetition_penalty": s.repetition_penalty,
            "structured_outputs": {"json": schema} if schema else None,
            "chat_template_kwargs": self.template_kwargs,
        }
        # the response's own fields (id, model, ...) are merged over the row: keep ours
        # a plain dict for the teacher's `chat_row` (kakugo.serve.llm_server): this
        # process never imports vLLM
        return {**row, ROW_ID: row["id"], "method": "chat_row", "request_kwargs": request}


class Postprocess:
    """Chat response -> our columns: the answer, the reasoning trace (vLLM's `reasoning`
    field when the teacher's deployment has a reasoning parser, else split from the text
    for `think_tags`), list replies parsed, tokens counted."""

    def __init__(self, config: RunConfig):
        self.mode = config.teacher.reasoning
        self.parsed = reasoning_parser(config.teacher) is not None
        self.teacher_model = config.teacher.model

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        return len(model_tokenizer(self.teacher_model)(text, add_special_tokens=False)
                   .input_ids)

    def split(self, message: dict[str, Any], usage: dict[str, Any]) -> tuple[str, str, int]:
        """(reasoning, answer, reasoning tokens) of a reply."""
        content = message.get("content") or ""
        if self.parsed:
            details = usage.get("completion_tokens_details") or {}
            return ((message.get("reasoning") or "").strip(), content.strip(),
                    int(details.get("reasoning_tokens") or 0))
        if self.mode == "think_tags":
            reasoning, answer = split_think_tags(content)
            return reasoning, answer, self.count_tokens(reasoning)
        return "", content.strip(), 0

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        # the engine's error response, e.g. a prompt too long (requests that got no answer
        # at all skip Postprocess: see failed_row)
        refused = row.get("error")
        error = str(refused.get("message") or refused) if isinstance(refused, dict) else ""
        choice = (row.get("choices") or [{}])[0] or {}
        usage = row.get("usage") or {}
        reasoning, answer, reasoning_tokens = self.split(choice.get("message") or {}, usage)
        # vLLM's own reason ("stop", "length", "abort", ...): only "stop" is a finished reply
        finish = "error" if error else str(choice.get("finish_reason") or "unknown")
        items: list[str] = []
        if row["n"] > 0 and finish == "stop":
            try:
                # strict=False: the grammar lets raw control characters into strings
                items = [str(i).strip() for i in json.loads(answer, strict=False)["items"]]
            except (ValueError, KeyError, TypeError) as exc:
                error = f"unparsable list reply: {exc}"
        out = {k: row[k] for k in REQUEST_COLUMNS}
        out["id"] = row.get(ROW_ID, row["id"])
        out.update(text=answer, reasoning=reasoning, items=items, finish_reason=finish,
                   prompt_tokens=int(usage.get("prompt_tokens") or 0),
                   completion_tokens=int(usage.get("completion_tokens") or 0),
                   reasoning_tokens=reasoning_tokens, error=error)
        return out


def teacher_template_kwargs(config: RunConfig) -> dict[str, Any] | None:
    """Chat-template arguments for the teacher (gpt-oss takes its reasoning effort there)."""
    effort = config.teacher.reasoning_effort
    return {"reasoning_effort": effort} if effort else None


def written_ids(storage: Storage, folder: str):
    """Ids already written by earlier (possibly interrupted) runs of this pass, as one
    Arrow string array (a resumed pass of millions of rows holds them compactly, in the
    object store, not as Python strings in the driver). A file cut short by the
    interruption (unreadable) is deleted, and rows whose request failed are taken out of
    their file: those rows are sent again."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    chunks = []
    for name in storage.list(folder, recursive=True):
        if not name.endswith(".parquet"):
            continue
        try:
            schema = pq.read_schema(storage.path(name), filesystem=storage.fs)
            columns = [c for c in ("id", "finish_reason") if c in schema.names]
            table = pq.read_table(storage.path(name), columns=columns, filesystem=storage.fs)
        except pa.ArrowInvalid as exc:  # not OSError: a storage outage deletes nothing
            log.warning("%s is unreadable (%s): deleted, its rows are sent again",
                        storage.uri(name), exc)
            storage.delete(name)
            continue
        if "finish_reason" in columns:
            failed = pc.equal(table.column("finish_reason"), FAILED)
            if pc.any(failed).as_py():  # rewrite the file without them (whole-object replace)
                whole = pq.read_table(storage.path(name), filesystem=storage.fs)
                table = whole.filter(pc.invert(failed))
                storage.write_parquet(name, table)
        chunks.extend(table.column("id").cast(pa.string()).chunks)
    return pa.chunked_array(chunks, type=pa.string()).combine_chunks()


def _written_ids_task(storage: Storage, folder: str):
    ids = written_ids(storage, folder)
    return ids, len(ids)


@functools.lru_cache(maxsize=4)
def _resolved(ref):
    import ray

    return ray.get(ref)


def not_written(ids_ref):
    """A Ray Data batch filter (on blocks as they are: Arrow tables or pandas frames)
    dropping the rows whose id is among the written ids in `ids_ref` (fetched once per
    worker process)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def keep(batch):
        ids = _resolved(ids_ref)
        if isinstance(batch, pa.Table):
            return batch.filter(pc.invert(pc.is_in(batch["id"], value_set=ids)))
        written = pc.is_in(pa.array(batch["id"], type=pa.string()), value_set=ids)
        return batch[~written.to_numpy(zero_copy_only=False)]

    return keep


class PassProgress:
    """While a pass runs, logs every `every_s` seconds the rows done per language, the rate
    and an ETA, counted from the parquet files the pass has written (their footers; the
    pass writes one block of `teacher.engine.batch_size` rows at a time)."""

    def __init__(self, storage: Storage, folder: str, totals: dict[str, int], every_s: float):
        self.storage, self.folder, self.totals, self.every_s = storage, folder, totals, every_s
        self.rows: dict[str, int] = {}  # file -> rows
        self.baseline = self.written()
        self.started = time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="pass-progress", daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        self.thread.join()

    def written(self) -> dict[str, int]:
        """Rows written so far per language (files read once each)."""
        import pyarrow.parquet as pq

        for name in self.storage.list(self.folder, recursive=True):
            if name.endswith(".parquet") and name not in self.rows:
                try:
                    with self.storage.fs.open_input_file(self.storage.path(name)) as f:
                        self.rows[name] = pq.ParquetFile(f).metadata.num_rows
                except (OSError, ValueError):  # still being written: next time
                    continue
        out: dict[str, int] = {}
        for name, n in self.rows.items():
            code = next((part.split("=", 1)[1] for part in name.split("/")
                         if part.startswith("language=")), "?")
            out[code] = out.get(code, 0) + n
        return out

    def line(self) -> str:
        written = self.written()
        done = {c: written.get(c, 0) - self.baseline.get(c, 0) for c in self.totals}
        total, finished = sum(self.totals.values()), sum(done.values())
        rate = finished / max(time.monotonic() - self.started, 1e-9)
        eta = f"{(total - finished) / rate:.0f} s" if rate > 0 else "unknown"
        per_language = ", ".join(f"{c} {done[c]}/{n}" for c, n in sorted(self.totals.items()))
        return (f"{self.folder}: {finished}/{total} rows ({100 * finished / max(total, 1):.0f}%)"
                f" [{per_language}], {rate:.2f} rows/s, ETA {eta}")

    def _loop(self) -> None:
        while not self.stopped.wait(self.every_s):
            try:
                log.info("%s", self.line())
            except Exception as exc:  # noqa: BLE001 - progress must never stop the pass
                log.warning("%s: progress unavailable: %s", self.folder, exc)


def failed_row(row: dict[str, Any]) -> dict[str, Any]:
    """A request the teacher never answered (timeout, lost replica), in our columns. Ray's
    stage returns such rows without calling Postprocess; they are sent again on a rerun."""
    out = {k: row.get(k) for k in REQUEST_COLUMNS}
    out["id"] = row.get(ROW_ID) or row["id"]
    out.update(text="", reasoning="", items=[], finish_reason=FAILED, prompt_tokens=0,
               completion_tokens=0, reasoning_tokens=0,
               error=f"teacher request failed: {row['__inference_error__']}")
    return out


def output_row(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("__inference_error__"):
        return failed_row(row)
    return {k: v for k, v in row.items() if k != "__inference_error__"}


def reply_schema():
    """The Arrow schema of a pass's output rows (request columns, then OUTPUT_COLUMNS)."""
    import pyarrow as pa

    nested = {"items": pa.list_(pa.string())}
    return pa.schema([(c, nested.get(c) or getattr(pa, TYPED_COLUMNS.get(c, "string"))())
                      for c in (*REQUEST_COLUMNS, *OUTPUT_COLUMNS)])


def write_replies(replies, storage: Storage, folder: str) -> None:
    """Write a pass's reply rows (a Ray Dataset, as the processor returns them) under
    `folder`, partitioned by language: a parquet file per block as it is answered, each
    with `reply_schema()`. Typed from their values alone, a block whose rows have no item
    (all failed, or no list reply parsed) would type `items` as a list of nulls, and
    pyarrow could not read that file in one dataset with the others."""
    replies.map(output_row).write_parquet(storage.path(folder), filesystem=storage.fs,
                                          partition_cols=["language"], schema=reply_schema())


def language_counts(dataset) -> dict[str, int]:
    """Rows per language of a Ray Dataset, counted where the blocks are: the driver gets
    a few rows per block, not the column (no shuffle either)."""
    import pandas as pd

    def count(block: pd.DataFrame) -> pd.DataFrame:
        counts = block["language"].value_counts()
        return pd.DataFrame({"language": counts.index.astype(str), "rows": counts.values})

    totals: dict[str, int] = {}
    for row in dataset.select_columns(["language"]).map_batches(
            count, batch_format="pandas", batch_size=None).iter_rows():
        totals[row["language"]] = totals.get(row["language"], 0) + int(row["rows"])
    return totals


def run_pass(requests, config: RunConfig, teacher: Teacher, storage: Storage,
             folder: str, codes: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Send the missing rows of `requests` (a Ray Dataset) to the teacher; write parquet.
    Returns the pass's counts, with per-language stats (step_stats) under "languages".

    A failed attempt (e.g. an engine replica died: Serve starts another) is followed, after
    the teacher is running again, by one that sends only the rows still missing, up to
    `teacher.pass_attempts`. Too many failed requests fail the stage with a TeacherPassError.
    """
    import ray
    from ray.data.llm import build_processor

    started, held = time.monotonic(), teacher.replica_seconds()
    attempts = config.teacher.pass_attempts
    # the written ids are read in a task on the driver's node (which sees the output root
    # as the driver does) and stay in the object store: a resumed pass of millions of rows
    # keeps no id set in the driver
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    read_written = ray.remote(_written_ids_task).options(
        num_returns=2, num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False))
    skipped = sent = attempt = 0
    for attempt in range(1, attempts + 1):
        ids_ref, count_ref = read_written.remote(storage, folder)
        written = ray.get(count_ref)
        skipped = skipped if attempt > 1 else written
        todo = requests.map_batches(not_written(ids_ref), batch_format=None,
                                    batch_size=None) if written else requests
        # the requests of an attempt are computed once (spilled to disk if large) and counted
        todo = todo.materialize()
        if todo.count() == 0:
            break
        totals = language_counts(todo)
        rows = sum(totals.values())
        sent = max(sent, rows)
        log.info("%s: %d rows to send to the teacher (%d written earlier) [%s]%s", folder,
                 rows, written,
                 ", ".join(f"{c} {n}" for c, n in sorted(totals.items())),
                 f", attempt {attempt} of {attempts}" if attempt > 1 else "")
        processor = build_processor(
            teacher.processor_config(request_timeout_s=config.teacher.request_timeout_s,
                                     rows=rows),
            preprocess=Preprocess(config), postprocess=Postprocess(config))
        # blocks of one batch each: every batch's replies are written as soon as they are
        # back (progress, and what a cut pass keeps), not when a whole input block is done
        todo = todo.repartition(target_num_rows_per_block=config.teacher.engine.batch_size)
        try:
            with PassProgress(storage, folder, totals, config.progress_every_s) as progress:
                write_replies(processor(todo), storage, folder)
                log.info("%s", progress.line())
            break
        except Exception as exc:  # retried; the last one is raised
            if attempt == attempts:
                raise TeacherPassError(
                    f"{folder}: failed {attempts} times (teacher.pass_attempts) on the teacher "
                    f"deployment {TEACHER_APP}/{teacher.deployment}; last error: "
                    f"{type(exc).__name__}: {str(exc)[:500]}") from exc
            log.warning("%s: attempt %d of %d failed (%s: %s); waiting for the teacher, then "
                        "sending the missing rows again", folder, attempt, attempts,
                        type(exc).__name__, str(exc)[:300])
            teacher.wait_until_running()
    stats, first_failed = step_stats(storage, folder, codes)
    failed = {code: entry["failed"] for code, entry in stats.items() if entry.get("failed")}
    n_failed = sum(failed.values())
    if sent and n_failed > config.teacher.max_failed_fraction * sent:
        raise TeacherPassError(
            f"{folder}: {n_failed} of {sent} teacher requests failed ("
            + ", ".join(f"{c}: {n}" for c, n in sorted(failed.items()))
            + f") on the teacher deployment {TEACHER_APP}/{teacher.deployment}, more than "
            f"teacher.max_failed_fraction={config.teacher.max_failed_fraction}; first error: "
            f"{first_failed}. Rerun to send them again.")
    return {"skipped_existing": skipped, "sent": sent, "attempts": attempt,
            "failed_requests": n_failed,
            "wall_seconds": round(time.monotonic() - started, 2),
            "replica_seconds": round(teacher.replica_seconds() - held, 2),
            "device": teacher.device(), "languages": stats}
