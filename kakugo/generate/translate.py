"""Stage 3: an English instruction set translated by the teacher, and the rules a
translation must pass to be kept.

Source: `BAAI/Infinity-Instruct` (config `7M_core`, English rows only; any hub dataset id,
or a local folder of data files, loaded with `datasets.load_dataset`), a local/S3 jsonl or
parquet of conversations in the same shape ("conversations": [{"from": "human"|"gpt",
"value": ...}] or "messages": [{"role", "content"}]), or `embedded:english-instructions` (a
small set shipped with the package for offline runs).

The rows are a uniform sample of the whole source, drawn with the run's seed: row indices
in a seeded random order over the source's known size, each row taken if it is English
and within `max_source_tokens` teacher tokens, until `rows` are taken. The same seed gives
the same rows; the same rows are translated into every language of a batch. A hub source
is downloaded once into the Hugging Face cache (memory-mapped, read by index), not
streamed: a stream can only be sampled from its first rows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import Any

from kakugo.config import RunConfig, TranslationConfig
from kakugo.errors import TranslationSourceError
from kakugo.generate.requests import Row, make_request, stable_id
from kakugo.prompts import render
from kakugo.storage import Storage

EMBEDDED_SOURCE = "embedded:english-instructions"
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# The rules a translated row must pass, in the order they are checked.


Turns = list[dict[str, str]]


def to_turns(record: dict[str, Any], where: str) -> Turns:
    """A source record's conversation as [{role, content}] with roles user/assistant."""
    if "conversations" in record:
        turns, role_key, text_key = record["conversations"], "from", "value"
    elif "messages" in record:
        turns, role_key, text_key = record["messages"], "role", "content"
    else:
        raise TranslationSourceError(
            f"{where}: expected a 'conversations' (from/value) or 'messages' (role/content) "
            f"field, found {sorted(record)}")
    out = []
    for turn in turns:
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise TranslationSourceError(
                f"{where}: every turn needs '{role_key}' and '{text_key}', found {turn!r:.80}")
        role = SHAREGPT_ROLES.get(str(turn[role_key]))
        if role is None:  # system/tool turns are not translated
            continue
        out.append({"role": role, "content": str(turn[text_key])})
    return out


def _is_english(record: dict[str, Any]) -> bool:
    return record.get("langdetect", "en") in ("en", "eng", None)


def _local_records(source: str) -> list[dict[str, Any]]:
    if source == EMBEDDED_SOURCE:
        text = (resources.files("kakugo") / "data" / "english_instructions.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    root, _, name = source.rpartition("/")
    storage = Storage(root or ".")
    if not storage.exists(name):
        raise TranslationSourceError(f"translation.source {source} does not exist")
    if name.endswith(".parquet"):
        return storage.read_parquet(name).to_pylist()
    if not name.endswith((".jsonl", ".json")):
        raise TranslationSourceError(
            f"translation.source {source}: unsupported file type (allowed: .jsonl, .parquet, "
            "or a hub dataset id)")
    records = []
    for number, line in enumerate(storage.read_text(name).splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise TranslationSourceError(
                    f"translation.source {source} line {number}: not a JSON object") from None
    return records


def _dataset_records(cfg: TranslationConfig) -> Sequence[dict[str, Any]]:
    """A hub dataset (or a local folder of data files) with random access by index."""
    from datasets import load_dataset

    try:
        return load_dataset(cfg.source, cfg.subset, split=cfg.split)
    except Exception as exc:  # offline, gated, no such config or split: say which and why
        raise TranslationSourceError(
            f"translation.source {cfg.source} (subset {cfg.subset}, split {cfg.split}) "
            f"cannot be loaded: {type(exc).__name__}: {exc}") from exc


def is_file_source(source: str) -> bool:
    return source == EMBEDDED_SOURCE or source.endswith((".jsonl", ".json", ".parquet"))


def seeded_order(total: int, seed: int) -> Iterator[int]:
    """0..total-1 in a uniform random order drawn with `seed`, lazily: the first k form a
    uniform sample of k indices, without holding a permutation of `total` in memory."""
    rng = random.Random(seed)
    seen: set[int] = set()
    while len(seen) < total // 2:
        index = rng.randrange(total)
        if index not in seen:
            seen.add(index)
            yield index
    rest = [i for i in range(total) if i not in seen]  # the tail: a shuffle of what is left
    rng.shuffle(rest)
    yield from rest


def sample_conversations(records: Sequence[dict[str, Any]], cfg: TranslationConfig,
                         seed: int, count_tokens: Callable[[str], int]) -> list[dict[str, Any]]:
    """Up to `cfg.rows` English conversations within the token limit, a uniform seeded
    sample of `records`: {"source_id", "turns", "source_index"}."""
    rows = []
    for index in seeded_order(len(records), seed):
        record = records[index]
        if not _is_english(record):
            continue
        turns = to_turns(record, f"translation.source {cfg.source} row {index + 1}")
        if not turns or sum(count_tokens(t["content"]) for t in turns) > cfg.max_source_tokens:
            continue
        rows.append({"source_id": stable_id("translation", json.dumps(turns, sort_keys=True)),
                     "turns": turns, "source_index": index})
        if len(rows) == cfg.rows:
            break
    return rows


def load_source(cfg: TranslationConfig, seed: int,
                count_tokens: Callable[[str], int]) -> list[dict[str, Any]]:
    """Up to `cfg.rows` English conversations, a uniform sample drawn with `seed`."""
    if cfg.rows == 0:
        return []
    records = (_local_records(cfg.source) if is_file_source(cfg.source)
               else _dataset_records(cfg))
    return sample_conversations(records, cfg, seed, count_tokens)


def conversation_schema(n_turns: int) -> dict[str, Any]:
    """JSON schema of a translation reply: {"turns": [exactly n {role, content}]}."""
    turn = {"type": "object",
            "properties": {"role": {"type": "string", "enum": ["user", "assistant"]},
                           "content": {"type": "string"}},
            "required": ["role", "content"], "additionalProperties": False}
    return {"type": "object",
            "properties": {"turns": {"type": "array", "items": turn,
                                     "minItems": n_turns, "maxItems": n_turns}},
            "required": ["turns"], "additionalProperties": False}


def translation_requests(language: str, language_name: str, sources: list[dict[str, Any]],
                         config: RunConfig) -> Iterator[Row]:
    system = render("translate_system", language=language_name)
    for source in sources:
        turns = source["turns"]
        yield make_request(
            language=language, language_name=language_name, category="translation",
            step="translate", parent_id=source["source_id"], position=0,
            item=json.dumps(turns, ensure_ascii=False), seed="", specific=False, n=0,
            schema=json.dumps(conversation_schema(len(turns))),
            max_tokens=config.translation.max_tokens, system=system,
            user=render("translate", language=language_name, n=len(turns),
                        conversation=json.dumps({"turns": turns}, ensure_ascii=False, indent=1)))
