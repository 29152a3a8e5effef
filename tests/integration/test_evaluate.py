"""Stage 6 through the Serve app (lm-eval `local-completions` and `local-chat-completions`):
SIB-200 and FLORES on the real local data for Scottish Gaelic (base and tuned) and Yoruba
(base only: no tuned model), Belebele and Global-MMLU on fixtures in their real schemas;
the table, plots and raw results; a rerun does no lm-eval work."""

import csv
import io

import pytest

from kakugo.config import load_config
from kakugo.languages import resolve
from tests.conftest import SERVE_KEY_ENV, TINY_STUDENT
from tests.unit.test_evaluate_tasks import fixture_data_dir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

TASKS = '["sib200", "belebele", "global_mmlu", "flores_en_xx", "flores_xx_en"]'


@pytest.fixture(scope="module")
def evaluated(served, trained, data_dir, tmp_path_factory):
    from kakugo.evaluate.runner import evaluate

    data = fixture_data_dir(tmp_path_factory.mktemp("eval"), data_dir)
    config = load_config("configs/tiny-cpu.yaml", [
        *TINY_STUDENT, f"output={trained['out']}", 'languages=["gd", "yo"]', f"evaluation.data_dir={data}",
        f"evaluation.tasks={TASKS}", "evaluation.limit=4", "evaluation.max_gen_tokens=40",
        "evaluation.num_fewshot=3",  # the paper's (tiny-cpu.yaml evaluates 0-shot)
        f"evaluation.url={served['url']}",
        f"serving.api_key_env={SERVE_KEY_ENV}"])  # the served app wants its key
    langs = [resolve("gd", data), resolve("yo", data)]
    summary = evaluate(config, langs, trained["storage"])
    return {"config": config, "langs": langs, "summary": summary, "storage": trained["storage"]}


def test_table_has_base_tuned_and_delta_where_both_exist(evaluated):
    rows = {(r["language"], r["task"]): r for r in evaluated["summary"]["rows"]}
    for task in ("sib200", "flores_en_xx", "flores_xx_en"):
        row = rows[("gla_Latn", task)]
        assert row["base"] is not None and row["tuned"] is not None
        assert row["delta"] == pytest.approx(row["tuned"] - row["base"], abs=0.011)
    assert 0 <= rows[("gla_Latn", "sib200")]["base"] <= 100
    for task in ("sib200", "belebele", "global_mmlu", "flores_en_xx", "flores_xx_en"):
        row = rows[("yor_Latn", task)]
        assert row["base"] is not None and row["tuned"] is None
        assert row["note"] == "no tuned model" and row["delta"] is None


def test_missing_coverage_is_shown_as_missing_not_zero(evaluated):
    storage = evaluated["storage"]
    table = list(csv.DictReader(io.StringIO(storage.read_text("eval/results.csv"))))
    gla_belebele = next(r for r in table if r["language"] == "gla_Latn" and r["task"] == "belebele")
    assert gla_belebele["base"] == "" and gla_belebele["note"] == "not in Belebele"
    markdown = storage.read_text("eval/results.md")
    assert "| gla_Latn | Scottish Gaelic | belebele | acc | n/a | n/a | n/a | not in Belebele |" \
        in markdown


def test_raw_results_and_plots_are_written(evaluated):
    storage = evaluated["storage"]
    raw = storage.read_json("eval/gla_Latn/kakugo-gla/flores_en_xx.json")
    assert raw["lm_eval_model"] == "local-chat-completions" and raw["num_fewshot"] == 3
    assert "chrfpp,none" in raw["results"] and raw["n_samples"]["effective"] == 4
    sib = storage.read_json("eval/yor_Latn/tiny-granite/sib200.json")
    assert sib["lm_eval_model"] == "local-completions" and "acc,none" in sib["results"]
    for task in ("sib200", "belebele", "global_mmlu", "flores_en_xx", "flores_xx_en"):
        assert storage.read_bytes(f"eval/plots/{task}.png").startswith(b"\x89PNG")


def test_rerun_reuses_every_finished_result(evaluated, monkeypatch):
    from kakugo.evaluate import runner

    def no_lm_eval(*args, **kwargs):
        raise AssertionError("lm-eval ran again")

    monkeypatch.setattr(runner, "run_lm_eval", no_lm_eval)
    again = runner.evaluate(evaluated["config"], evaluated["langs"], evaluated["storage"])
    assert again["rows"] == evaluated["summary"]["rows"]


def test_a_student_that_thinks_is_scored_on_its_answer_and_both_decode_alike(evaluated):
    """The tuned student was trained on rows that think inside <think> tags first: its
    translations open with that block, which is removed before chrF++; the base and the
    tuned student are decoded alike, and the results say how."""
    storage = evaluated["storage"]
    tuned = storage.read_json("eval/gla_Latn/kakugo-gla/flores_xx_en.json")
    base = storage.read_json("eval/gla_Latn/tiny-granite/flores_xx_en.json")
    assert tuned["decoding"] == base["decoding"]
    assert tuned["decoding"]["sampling"] == "greedy"
    assert tuned["decoding"]["repetition_penalty"] == 1.0
    assert tuned["examples"] and base["examples"]
    for example in tuned["examples"]:
        assert example["reply"].lstrip().startswith("<think>"), example  # it thinks first, as trained
        assert "think>" not in example["answer"] and "\n" not in example["answer"]
        if "</think>" in example["reply"]:  # the answer is the first line after the block
            after = example["reply"].rsplit("</think>", 1)[1].strip().splitlines()
            assert example["answer"] == (after[0].strip() if after else "")
        else:  # still reasoning when its tokens ran out (the tiny student often never
            assert example["answer"] == ""  # closes its block): nothing to score
    assert "decode the base and the tuned student alike: greedy" in storage.read_text(
        "eval/results.md")


def test_a_retrained_model_is_evaluated_again_an_unchanged_one_is_not(evaluated, monkeypatch):
    """Results are tied to the model they scored: the tuned student's training manifest
    says it was trained again, so its results are stale; the base student's are not."""
    from kakugo import layout
    from kakugo.evaluate import runner

    storage = evaluated["storage"]
    asked = []

    def record(config, model, tasks, task_dir, url):
        asked.append(model.name)
        raise RuntimeError(f"lm-eval asked for {model.name}")

    monkeypatch.setattr(runner, "run_lm_eval", record)
    manifest = layout.read_manifest(storage, layout.train_dir("gla_Latn"))
    retrained = {**manifest, "finished": "2099-01-01T00:00:00+00:00"}
    storage.write_json(layout.manifest(layout.train_dir("gla_Latn")), retrained)
    try:
        out = runner.evaluate(evaluated["config"], evaluated["langs"], storage)
    finally:
        storage.write_json(layout.manifest(layout.train_dir("gla_Latn")), manifest)
    assert asked == ["kakugo-gla"]  # the base student's results still stand
    assert "lm-eval asked for kakugo-gla" in out["failed"]["gla_Latn"]
    # other shots change every score: the base student is evaluated again too
    asked.clear()
    zero_shot = evaluated["config"].model_copy(update={"evaluation": evaluated[
        "config"].evaluation.model_copy(update={"num_fewshot": 0})})
    runner.evaluate(zero_shot, evaluated["langs"], storage)
    assert asked and asked[0] == "tiny-granite"
