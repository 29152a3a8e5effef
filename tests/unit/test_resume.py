"""What a rerun of an interrupted engine pass takes as done."""

import pyarrow as pa
import pytest

from kakugo.generate import engine_pass
from kakugo.generate.engine_pass import not_written, written_ids
from kakugo.storage import Storage


def test_written_ids_reads_finished_files_and_drops_one_cut_short(tmp_path):
    storage = Storage(str(tmp_path))
    storage.write_parquet("generate/respond/language=gla_Latn/a.parquet",
                          pa.table({"id": ["r1", "r2"], "text": ["x", "y"]}))
    storage.write_parquet("generate/respond/language=gla_Latn/b.parquet",
                          pa.table({"id": ["r3"], "text": ["z"]}))
    whole = (tmp_path / "generate/respond/language=gla_Latn/b.parquet").read_bytes()
    (tmp_path / "generate/respond/language=gla_Latn/b.parquet").write_bytes(whole[:40])
    assert written_ids(storage, "generate/respond").to_pylist() == ["r1", "r2"]
    assert storage.list("generate/respond", recursive=True) == [
        "generate/respond/language=gla_Latn/a.parquet"]


def test_rows_whose_request_failed_are_taken_out_to_be_sent_again(tmp_path):
    storage = Storage(str(tmp_path))
    storage.write_parquet("pass/language=gla_Latn/a.parquet", pa.table({
        "id": ["r1", "r2", "r3"], "finish_reason": ["stop", "failed", "error"],
        "error": ["", "teacher request failed: TimeoutError", "prompt too long"]}))
    # r2 got no answer: sent again; r3 was refused by the engine: an answer, kept
    assert written_ids(storage, "pass").to_pylist() == ["r1", "r3"]
    kept = storage.read_parquet("pass/language=gla_Latn/a.parquet")
    assert kept.column("id").to_pylist() == ["r1", "r3"]


def test_written_rows_are_dropped_from_arrow_and_pandas_blocks(monkeypatch):
    """Ray Data hands the filter its blocks as they are: Arrow tables or pandas frames."""
    monkeypatch.setattr(engine_pass, "_resolved", lambda ref: ref)  # no object store here
    keep = not_written(pa.array(["r2", "r9"]))
    table = pa.table({"id": ["r1", "r2", "r3"], "n": [1, 2, 3]})
    assert keep(table).column("n").to_pylist() == [1, 3]
    assert keep(table.to_pandas())["n"].tolist() == [1, 3]
    assert keep(table.slice(0, 0)).schema == table.schema  # an empty block keeps its types


@pytest.mark.parametrize("batch_rows", [65_536, 1])
def test_step_stats_count_each_language_and_the_failed_requests_in_one_scan(
        tmp_path, monkeypatch, batch_rows):
    from kakugo import steps
    from kakugo.generate.engine_pass import step_stats

    monkeypatch.setattr(steps, "STATS_BATCH_ROWS", batch_rows)  # one batch, or one per row

    storage = Storage(str(tmp_path))
    storage.write_parquet("pass/language=gla_Latn/a.parquet", pa.table({
        "id": ["r1", "r2", "r3"], "category": ["topic", "topic", "scenario"],
        "prompt_tokens": [10, 0, 7], "completion_tokens": [5, 0, 9],
        "reasoning_tokens": [3, 0, 6], "finish_reason": ["stop", "failed", "length"],
        "error": ["", "teacher request failed: TimeoutError", ""]}))
    storage.write_parquet("pass/language=cym_Latn/a.parquet", pa.table({
        "id": ["w1"], "category": ["topic"], "prompt_tokens": [4], "completion_tokens": [2],
        "reasoning_tokens": [0], "finish_reason": ["stop"], "error": [""]}))
    stats, first = step_stats(storage, "pass", ["gla_Latn", "yor_Latn"])
    assert stats["gla_Latn"] == {"rows": 3, "categories": {"scenario": 1, "topic": 2},
                                 "prompt_tokens": 17, "completion_tokens": 14,
                                 "reasoning_tokens": 9, "errors": 1, "unfinished": 2,
                                 "failed": 1}
    assert stats["cym_Latn"]["rows"] == 1 and stats["cym_Latn"]["failed"] == 0
    assert stats["yor_Latn"]["rows"] == 0 and stats["yor_Latn"]["failed"] == 0  # none written
    assert first == "teacher request failed: TimeoutError"
    assert step_stats(storage, "nothing-yet", ["gla_Latn"]) == ({"gla_Latn": {"rows": 0}}, "")


def test_step_stats_of_outputs_written_before_reasoning_tokens_were_counted(tmp_path):
    from kakugo.generate.engine_pass import step_stats

    storage = Storage(str(tmp_path))
    storage.write_parquet("pass/language=gla_Latn/a.parquet", pa.table({
        "id": ["r1"], "category": ["topic"], "prompt_tokens": [10], "completion_tokens": [5],
        "finish_reason": ["stop"], "error": [""]}))
    stats, _ = step_stats(storage, "pass", ["gla_Latn"])
    assert stats["gla_Latn"]["completion_tokens"] == 5
    assert stats["gla_Latn"]["reasoning_tokens"] == 0
