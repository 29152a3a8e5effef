"""The batch report and its cost ledger from what the stages left in storage (manifests
and results written here by hand, in the stages' formats)."""

import pytest

from kakugo.config import load_config
from kakugo.generate.pipeline import GenerationStage
from kakugo.languages import resolve
from kakugo.report import build_report
from kakugo.storage import Storage


def test_report_prices_every_stage_and_summarizes_each_language(tmp_path, data_dir):
    config = load_config("configs/tiny-cpu.yaml", [
        "cluster.teacher_accelerator_type=H100", "cluster.training_accelerator_type=H200"])
    gd, cy = resolve("gd", data_dir), resolve("cy", data_dir)
    storage = Storage(str(tmp_path))
    for step in GenerationStage.steps:  # 3600 H100-seconds per step, split 2:1
        storage.write_json(f"generate/{step}/_manifest.json", {"device": "H100", "languages": {
            "gla_Latn": {"rows": 20, "device_seconds": 2400.0, "prompt_tokens": 100,
                         "completion_tokens": 50, "reasoning_tokens": 30},
            "cym_Latn": {"rows": 10, "device_seconds": 1200.0}}})
    checks = {"basic": {"action": "drop", "dropped": 4, "annotated": 0},
              "language_id": {"action": "annotate", "dropped": 0, "annotated": 6},
              "dedup": {"action": "off", "dropped": 0, "annotated": 0}}
    storage.write_json("dataset/sft/_manifest.json", {"device": "CPU", "languages": {
        "gla_Latn": {"rows": 15, "device_seconds": 36.0, "filters": checks},
        "cym_Latn": {"rows": 2, "device_seconds": 36.0}}})
    storage.write_json("train/gla_Latn/_manifest.json", {
        "device": "H200", "device_seconds": 7200.0, "total_steps": 4, "train_rows": 9,
        "wall_seconds": 900.0, "metrics": {"loss": 1.5, "val_loss": 1.7}})
    storage.write_json("eval/gla_Latn/kakugo-gla/sib200.json", {
        "device": "CPU", "device_seconds": 72.0})
    storage.write_text("eval/results.csv", "language,name,task,metric,base,tuned,delta,note\n"
                       "gla_Latn,Scottish Gaelic,sib200,acc,20.0,30.0,10.0,\n")
    failed = {"cym_Latn": {"stage": "dataset", "error": "DatasetTooSmallError: 2 rows"}}
    report = build_report(config, [gd, cy], storage, failed)

    gla, cym = report["languages"]
    assert gla["status"] == "done" and gla["dataset_rows"] == 15
    assert gla["generated_rows"] == {step: 20 for step in GenerationStage.steps}
    steps = len(GenerationStage.steps)
    assert gla["teacher_tokens"] == {"prompt": 100 * steps, "completion": 50 * steps,
                                     "reasoning": 30 * steps}
    assert cym["teacher_tokens"] == {"prompt": 0, "completion": 0, "reasoning": 0}
    assert gla["training"]["served_as"] == "kakugo-gla"
    assert gla["filters"] == checks and cym["filters"] == {}
    from kakugo.report import render_markdown

    markdown = render_markdown(report)
    assert "| gla_Latn | basic | drop | 4 | 0 |" in markdown
    assert "| gla_Latn | language_id | annotate | 0 | 6 |" in markdown
    assert "| gla_Latn | dedup |" not in markdown  # off: not run
    assert gla["training"]["steps"] == 4 and gla["training"]["val_loss"] == 1.7
    steps = len(GenerationStage.steps)
    assert {k: v for k, v in gla["usd"].items() if k != "total"} == {
        "generate": round(steps * 2400 / 3600 * 2.5, 4), "dataset": round(36 / 3600 * 0.05, 4),
        "train": 7.0, "evaluate": 0.001}
    assert gla["usd"]["total"] == pytest.approx(
        sum(gla["usd"][s] for s in ("generate", "dataset", "train", "evaluate")), abs=1e-3)
    assert cym["status"] == "failed" and cym["failed_stage"] == "dataset"
    assert cym["training"] is None and cym["usd"]["train"] == 0.0
    assert report["status"] == {"done": 1, "failed": 1, "incomplete": 0}
    assert {e["device"] for e in report["cost"]["ledger"]} == {"H100", "H200", "CPU"}
    assert report["cost"]["within_paper_figure"] is True  # about $16 per language


def test_a_device_without_a_price_is_priced_as_a_gpu_and_says_so(tmp_path, data_dir):
    """A stage that ran on nodes of a type nobody priced (any GPU was taken) still costs."""
    from kakugo.costs import ledger

    config = load_config("configs/tiny-cpu.yaml", ["cluster.price_per_hour.GPU=2.0"])
    storage = Storage(str(tmp_path))
    storage.write_json("train/gla_Latn/_manifest.json", {"device": "L40S",
                                                         "device_seconds": 3600.0})
    storage.write_json("train/cym_Latn/_manifest.json", {"device": "H100",
                                                         "device_seconds": 3600.0})
    entries = ledger(config, [resolve("gd", data_dir), resolve("cy", data_dir)], storage)
    by_language = {e["language"]: e for e in entries}
    assert by_language["gla_Latn"] == {"language": "gla_Latn", "stage": "train",
                                       "device": "L40S", "device_seconds": 3600.0,
                                       "usd": 2.0, "priced_as": "GPU"}
    assert by_language["cym_Latn"]["usd"] == 2.5 and "priced_as" not in by_language["cym_Latn"]
