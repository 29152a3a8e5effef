"""kakugo.results on an output root that lacks a stage's files: the error names the file
and the stage that writes it (the full tables are checked by running
notebooks/results.ipynb on the e2e run)."""

import pytest

from kakugo import layout, results
from kakugo.storage import Storage


@pytest.mark.parametrize("table, missing, writer", [
    (results.status, "report.json", "the report stage"),
    (results.costs, "report.json", "the report stage"),
    (results.dataset_sizes, "dataset/sft/_manifest.json", "the dataset stage"),
    (results.samples, "dataset/sft/_manifest.json", "the dataset stage"),
    (results.scores, "eval/results.csv", "the evaluate stage"),
])
def test_a_missing_stage_output_is_named(tmp_path, table, missing, writer):
    with pytest.raises(results.RunResultsError, match=f"{missing} does not exist: {writer}"):
        table(Storage(str(tmp_path)))


def test_rejects_keep_languages_without_any(tmp_path):
    storage = Storage(str(tmp_path))
    storage.write_json(layout.DATASET_MANIFEST, {"languages": {
        "gla_Latn": {"categories": {"topic": 3}, "rows": 3, "candidates": 5,
                     "rejects": {"basic/unfinished": 2}},
        "cym_Latn": {"categories": {"topic": 1, "translation": 2}, "rows": 3,
                     "candidates": 3, "rejects": {}}}})
    rejected = results.rejects(storage)
    assert rejected.loc["cym_Latn", "basic/unfinished"] == 0
    assert rejected.loc["gla_Latn", "basic/unfinished"] == 2
    sizes = results.dataset_sizes(storage)
    assert sizes.loc["gla_Latn", "translation"] == 0 and sizes.loc["cym_Latn", "kept"] == 3
