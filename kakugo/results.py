"""A finished run's outputs as tables, for notebooks/results.ipynb and other analysis.

Everything is read from the output root (local or s3://): the dataset stage's manifest
(kept rows per category, rejects per filter rule, language-ID verdicts), the batch report
(status, cost per language and stage), the evaluation table (base vs tuned per task) and
the datasets themselves (sample rows).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from kakugo import layout
from kakugo.errors import RunResultsError
from kakugo.storage import Storage


def _json(storage: Storage, rel: str, writer: str) -> dict[str, Any]:
    data = storage.read_json(rel, default=None)
    if data is None:
        raise RunResultsError(f"{storage.uri(rel)} does not exist: {writer} writes it")
    return data


def _report(storage: Storage) -> dict[str, Any]:
    return _json(storage, layout.REPORT_JSON, "the report stage (the last stage of `kakugo run`)")


def status(storage: Storage) -> pd.DataFrame:
    """One row per language: status, failed stage and error, rows, training loss, total $."""
    report = _report(storage)
    return pd.DataFrame([{
        "language": lang["flores_code"], "name": lang["name"], "status": lang["status"],
        "failed_stage": lang["failed_stage"], "dataset_rows": lang["dataset_rows"],
        "train_loss": (lang["training"] or {}).get("loss"),
        "val_loss": (lang["training"] or {}).get("val_loss"),
        "usd": lang["usd"]["total"]} for lang in report["languages"]]).set_index("language")


def _dataset_stats(storage: Storage) -> dict[str, dict[str, Any]]:
    return _json(storage, layout.DATASET_MANIFEST, "the dataset stage")["languages"]


def dataset_sizes(storage: Storage) -> pd.DataFrame:
    """Kept rows per language (rows) and category (columns), with candidates and rows."""
    stats = _dataset_stats(storage)
    table = pd.DataFrame({code: s["categories"] for code, s in stats.items()}).T.fillna(0)
    table = table.astype(int).sort_index(axis=1)
    table["kept"] = [stats[c]["rows"] for c in table.index]
    table["candidates"] = [stats[c]["candidates"] for c in table.index]
    table.index.name = "language"
    return table


def rejects(storage: Storage) -> pd.DataFrame:
    """Rejected rows per language (rows) and filter rule (columns, e.g. basic/unfinished)."""
    stats = _dataset_stats(storage)
    table = pd.DataFrame({code: s["rejects"] or {} for code, s in stats.items()}).T
    table = table.reindex(list(stats)).fillna(0).astype(int).sort_index(axis=1)
    table.index.name = "language"
    return table


def costs(storage: Storage) -> pd.DataFrame:
    """USD per language (rows) and stage (columns) from the report's cost ledger, with the
    device-seconds behind them in the `device_seconds` frame attribute."""
    report = _report(storage)
    ledger = pd.DataFrame(report["cost"]["ledger"])
    if ledger.empty:
        return pd.DataFrame()
    table = ledger.pivot_table(index="language", columns="stage", values="usd",
                               aggfunc="sum", fill_value=0.0)
    table["total"] = table.sum(axis=1)
    table.attrs["device_seconds"] = ledger.pivot_table(
        index="language", columns="stage", values="device_seconds", aggfunc="sum")
    table.attrs["paper_usd_per_language"] = report["cost"]["paper_usd_per_language"]
    return table


def scores(storage: Storage) -> pd.DataFrame:
    """Base vs tuned per language and task; missing coverage stays missing (NaN + note)."""
    from kakugo.report import evaluation_rows

    if not storage.exists(layout.EVAL_TABLE):
        raise RunResultsError(f"{storage.uri(layout.EVAL_TABLE)} does not exist: the evaluate "
                              "stage writes it")
    return pd.DataFrame(evaluation_rows(storage))


def samples(storage: Storage, per_language: int = 3) -> pd.DataFrame:
    """The first rows of each language's SFT dataset: the user turn and the reply."""
    import pyarrow.dataset as pads

    out = []
    for code in _dataset_stats(storage):
        folder = layout.dataset_data(code)
        if not storage.list(folder):
            continue
        dataset = pads.dataset(storage.path(folder), format="parquet", filesystem=storage.fs)
        for row in dataset.head(per_language, columns=["messages"]).to_pylist():
            turns = row["messages"]
            user = next((m["content"] for m in turns if m["role"] == "user"), "")
            reply = next((m["content"] for m in reversed(turns) if m["role"] == "assistant"), "")
            out.append({"language": code, "user": user, "assistant": reply,
                        "turns": len(turns)})
    return pd.DataFrame(out, columns=["language", "user", "assistant", "turns"])
