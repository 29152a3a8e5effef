"""One engine pass: a Ray Dataset of request rows through the teacher's vLLM engines.

Every row of the pass (any language, any category, any call type) goes through the same
engine replicas, built once with `ray.data.llm.build_processor`. List calls (n > 0) are
constrained to the count-exact JSON schema, so every finished reply parses. Output rows
keep every request column and add: text, reasoning, items, finish_reason, prompt_tokens,
completion_tokens, error.

Resume: the pass writes parquet files under its folder as blocks finish; a rerun reads
the ids already written and sends only the missing rows to the engines.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from kakugo.config import RunConfig, SamplingConfig
from kakugo.generate.reasoning import split_reasoning
from kakugo.generate.requests import REQUEST_COLUMNS
from kakugo.prompts import list_schema
from kakugo.storage import Storage
from kakugo.teacher import processor_config

log = logging.getLogger("kakugo.generate")

OUTPUT_COLUMNS = ("text", "reasoning", "items", "finish_reason", "prompt_tokens",
                  "completion_tokens", "error")


def reply_token_limit(row: dict[str, Any], sampling: SamplingConfig) -> int:
    """max_tokens of a request: its own, else the list or the free-text default."""
    if row["max_tokens"]:
        return int(row["max_tokens"])
    return sampling.list_max_tokens if row["n"] > 0 else sampling.max_tokens


class Preprocess:
    """Request row -> chat messages + per-row sampling params (list calls get the schema)."""

    def __init__(self, config: RunConfig):
        self.sampling = config.teacher.sampling
        # gpt-oss marks its analysis/final channels with special tokens: keep them
        self.keep_special_tokens = config.teacher.reasoning == "gpt_oss"

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        s = self.sampling
        params: dict[str, Any] = {"temperature": s.temperature, "top_p": s.top_p,
                                  "repetition_penalty": s.repetition_penalty}
        if self.keep_special_tokens:
            params["skip_special_tokens"] = False
        params["max_tokens"] = reply_token_limit(row, s)
        schema = row["schema"] or (
            json.dumps(list_schema(int(row["n"]), s.list_item_max_chars)) if row["n"] > 0 else "")
        if schema:
            params["structured_outputs"] = {"json": schema, "disable_any_whitespace": True}
        messages = [{"role": "system", "content": row["system"]},
                    {"role": "user", "content": row["user"]}]
        return {**row, "messages": messages, "sampling_params": params}


class Postprocess:
    """Engine output -> our columns; list replies parsed, reasoning split, finish inferred."""

    def __init__(self, config: RunConfig):
        self.mode = config.teacher.reasoning
        self.sampling = config.teacher.sampling

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        error = str(row.get("__inference_error__") or "")
        text = row.get("generated_text") or ""
        completion = int(row.get("num_generated_tokens") or 0)
        limit = reply_token_limit(row, self.sampling)
        finish = "error" if error else ("length" if completion >= limit else "stop")
        reasoning, answer = split_reasoning(text, self.mode)
        items: list[str] = []
        if row["n"] > 0 and finish == "stop":
            try:
                # strict=False: the grammar lets raw control characters into strings
                items = [str(i).strip() for i in json.loads(answer, strict=False)["items"]]
            except (ValueError, KeyError, TypeError) as exc:
                error = f"unparsable list reply: {exc}"
        out = {k: row[k] for k in REQUEST_COLUMNS}
        out.update(text=answer, reasoning=reasoning, items=items, finish_reason=finish,
                   prompt_tokens=int(row.get("num_input_tokens") or 0),
                   completion_tokens=completion, error=error)
        return out


def teacher_template_kwargs(config: RunConfig) -> dict[str, Any] | None:
    """Chat-template arguments for the teacher (gpt-oss takes its reasoning effort there)."""
    effort = config.teacher.reasoning_effort
    return {"reasoning_effort": effort} if effort else None


def done_ids(storage: Storage, folder: str) -> set[str]:
    """Ids already written by earlier (possibly interrupted) runs of this pass."""
    import pyarrow.parquet as pq

    ids: set[str] = set()
    for name in storage.list(folder, recursive=True):
        if name.endswith(".parquet"):
            table = pq.read_table(storage.path(name), columns=["id"], filesystem=storage.fs)
            ids.update(table.column("id").to_pylist())
    return ids


def run_pass(requests, config: RunConfig, model_path: str, storage: Storage,
             folder: str) -> dict[str, Any]:
    """Send the missing rows of `requests` (a Ray Dataset) to the engines; write parquet."""
    from ray.data.llm import build_processor

    started = time.monotonic()
    skip = done_ids(storage, folder)
    todo = requests.filter(lambda row: row["id"] not in skip) if skip else requests
    processor = build_processor(
        processor_config(model_path, config.teacher.engine, seed=config.seed,
                         chat_template_kwargs=teacher_template_kwargs(config)),
        preprocess=Preprocess(config),
        postprocess=Postprocess(config),
    )
    processor(todo).write_parquet(storage.path(folder), filesystem=storage.fs,
                                  partition_cols=["language"])
    return {"skipped_existing": len(skip), "wall_seconds": round(time.monotonic() - started, 2)}
