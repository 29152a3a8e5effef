"""Context texts in the target language: FineWeb-2 from the hub, or local/S3 files.

A local source is a path template that may contain {flores_code}, {iso639_3} and
{data_dir} (the evaluation data folder); files may be .txt (one text per non-empty
line), .jsonl / .json (a "text" field), .parquet (a "text" column) or .tsv (a header
row with a "text" column, as in SIB-200).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

from kakugo.config import FINEWEB2_HUB_ID
from kakugo.errors import ContextSourceError
from kakugo.languages import Language
from kakugo.storage import Storage

FINEWEB2 = FINEWEB2_HUB_ID


def resolve_source(template: str, language: Language, data_dir: Path | None) -> str:
    try:
        return template.format(flores_code=language.flores_code, iso639_3=language.iso639_3,
                               data_dir=str(data_dir) if data_dir else "{data_dir}")
    except (KeyError, IndexError) as exc:
        raise ContextSourceError(
            f"generation.contexts.source {template!r}: unknown placeholder {exc}; "
            "allowed: {flores_code}, {iso639_3}, {data_dir}"
        ) from None


def _read_local(path: str) -> Iterator[str]:
    if "{data_dir}" in path:
        raise ContextSourceError(
            f"context source {path!r} needs the evaluation data folder: set KAKUGO_DATA_DIR "
            "or evaluation.data_dir"
        )
    root, _, name = path.rpartition("/")
    storage = Storage(root or ".")
    if not storage.exists(name):
        raise ContextSourceError(f"context source {path} does not exist")
    suffix = Path(name).suffix
    if suffix == ".parquet":
        table = storage.read_parquet(name)
        if "text" not in table.column_names:
            raise ContextSourceError(f"context source {path} has no 'text' column")
        yield from (t for t in table.column("text").to_pylist() if t)
        return
    raw = storage.read_text(name)
    if suffix in (".jsonl", ".json"):
        for number, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    raise ContextSourceError(
                        f"context source {path} line {number}: expected a JSON object with a "
                        "'text' field"
                    ) from None
                if text:
                    yield text
    elif suffix == ".tsv":
        reader = csv.DictReader(io.StringIO(raw), delimiter="\t", quoting=csv.QUOTE_NONE)
        if "text" not in (reader.fieldnames or []):
            raise ContextSourceError(f"context source {path} has no 'text' column")
        yield from (row["text"] for row in reader if row.get("text"))
    elif suffix == ".txt":
        yield from (line.strip() for line in raw.splitlines() if line.strip())
    else:
        raise ContextSourceError(
            f"context source {path}: unsupported file type {suffix!r} "
            "(allowed: .txt, .jsonl, .json, .parquet, .tsv)"
        )


def _read_fineweb2(language: Language) -> Iterator[str]:
    from datasets import load_dataset

    stream = load_dataset(FINEWEB2, name=language.flores_code, split="train", streaming=True)
    for row in stream:
        if row.get("text"):
            yield row["text"]


def iter_texts(template: str, language: Language, data_dir: Path | None,
               limit: int) -> Iterator[str]:
    """Up to `limit` texts in the language, in the source's order."""
    if limit <= 0:
        return
    texts = (_read_fineweb2(language) if template == "fineweb2"
             else _read_local(resolve_source(template, language, data_dir)))
    for count, text in enumerate(texts, 1):
        yield text
        if count >= limit:
            return


def truncate_tokens(texts: list[str], tokenizer, max_tokens: int) -> list[str]:
    """Cut each text to its first `max_tokens` tokens of the (student) tokenizer."""
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens]).strip()
            for text, ids in zip(texts, encoded, strict=True)]
