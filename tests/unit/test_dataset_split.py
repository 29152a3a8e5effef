"""The dataset step's split of a language's candidates into kept rows (chat messages) and
rejects, over several files, read back as one table each."""

import pyarrow as pa
import pyarrow.dataset as pads

from kakugo.config import load_config
from kakugo.dataset import stage as dataset_stage
from kakugo.dataset.stage import CANDIDATE_COLUMNS, DatasetStage
from kakugo.languages import resolve
from kakugo.storage import Storage


def candidate(i: int, language: str, reject: str) -> dict:
    row = {c: "" for c in CANDIDATE_COLUMNS}
    row.update(id=f"c{i}", language=language, category="topic", kind="generated",
               prompt=f"ceist {i}", response=f"freagairt {i}", reasoning="smaoin",
               revised=False, prompt_tokens=3, completion_tokens=4, finish_reason="stop",
               language_id_confidence=0.9, reject=reject)
    if i % 5 == 0:
        row["response"] = None  # a missing reply must not change the files' schema
    return row


def test_kept_and_rejected_rows_are_split_per_language(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(dataset_stage, "WRITE_BATCH_ROWS", 4)  # several files per folder
    storage = Storage(str(tmp_path))
    rows = [candidate(i, "gla_Latn", "dedup: near duplicate" if i % 3 == 0 else "")
            for i in range(11)] + [candidate(99, "cym_Latn", "")]
    for code in ("gla_Latn", "cym_Latn"):
        table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "language"}
                                      for r in rows if r["language"] == code])
        storage.write_parquet(f"dataset/candidates/language={code}/part-0.parquet", table)
    config = load_config("configs/tiny-cpu.yaml", [f"output={tmp_path}"])
    stage = DatasetStage(config, [resolve("gd", data_dir)], storage)
    stats = stage.write_language(resolve("gd", data_dir))

    def read(part):
        return pads.dataset(storage.path(f"gla_Latn/dataset/{part}"), format="parquet",
                            filesystem=storage.fs).to_table().to_pylist()

    kept, rejected = read("data"), read("rejects")
    assert sorted(r["id"] for r in kept) == sorted(f"c{i}" for i in range(11) if i % 3)
    assert sorted(r["id"] for r in rejected) == ["c0", "c3", "c6", "c9"]
    assert len(storage.list("gla_Latn/dataset/data")) > 1  # written batch by batch
    first = next(r for r in kept if r["id"] == "c1")
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["messages"][2]["content"].startswith("<think>\nsmaoin\n</think>")
    assert all(r["reject"].startswith("dedup") for r in rejected)
    assert stats["rows"] == len(kept) and stats["candidates"] == 11
    assert stats["filters"]["dedup"] == {"action": "drop", "dropped": 4, "annotated": 0}
    assert stats["rows_with_trace"] == len(kept) and stats["token_budget"] is None


def test_the_token_limited_variant_fills_its_budget_with_answers_first(tmp_path, data_dir):
    from kakugo.dataset.writer import TokenCounter, sft_messages
    from kakugo.models import ModelSource

    storage = Storage(str(tmp_path))
    rows = [candidate(i, "gla_Latn", "") | {"response": f"freagairt {i}",
                                            "reasoning": "smaoin " * 40,
                                            "language_id": "wrong:eng"}
            for i in range(10)]
    storage.write_parquet("dataset/candidates/language=gla_Latn/part-0.parquet",
                          pa.Table.from_pylist([{k: v for k, v in r.items() if k != "language"}
                                                for r in rows]))
    config = load_config("configs/tiny-cpu.yaml", [f"output={tmp_path}",
                                                   "filters.language_id=annotate"])
    count = TokenCounter(ModelSource.parse(config.student.model).materialize())
    answers = count([sft_messages(r, config, trace=False) for r in rows])
    traced = count([sft_messages(r, config) for r in rows])
    budget = sum(answers) + (traced[0] - answers[0]) + 5  # every answer, about one trace
    config = load_config("configs/tiny-cpu.yaml", [f"output={tmp_path}",
                                                   "filters.language_id=annotate",
                                                   f"dataset.token_budget={budget}"])
    lang = resolve("gd", data_dir)
    stats = DatasetStage(config, [lang], storage).write_language(lang)
    kept = pads.dataset(storage.path("gla_Latn/dataset/data"), format="parquet",
                        filesystem=storage.fs).to_table().to_pylist()
    assert len(kept) == 10 and stats["rows_with_trace"] == 1
    with_trace = [r for r in kept if r["messages"][2]["content"].startswith("<think>")]
    assert len(with_trace) == 1
    used = count([list(r["messages"]) for r in kept])
    assert sum(used) == stats["budget_tokens_used"] <= budget
    # the annotating filter flagged every row and dropped none
    assert stats["filters"]["language_id"] == {"action": "annotate", "dropped": 0,
                                               "annotated": 10}
    card = storage.read_text("gla_Latn/dataset/README.md")
    assert f"a budget of {budget} training tokens" in card
    # a budget too small for every answer leaves rows out, as rejects that say why
    small = load_config("configs/tiny-cpu.yaml", [f"output={tmp_path}",
                                                  "filters.language_id=annotate",
                                                  f"dataset.token_budget={sum(answers[:4])}"])
    stats = DatasetStage(small, [lang], storage).write_language(lang)
    rejected = pads.dataset(storage.path("gla_Latn/dataset/rejects"), format="parquet",
                            filesystem=storage.fs).to_table().to_pylist()
    assert stats["rows"] + len(rejected) == 10 and stats["rows_with_trace"] == 0
    assert {r["reject"] for r in rejected} == {"token_budget"}
    assert stats["rejects"] == {"token_budget": len(rejected)}
