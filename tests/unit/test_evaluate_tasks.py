"""Evaluation tasks: our rendered tasks prompt exactly like lm-eval's registry tasks, chrF++
equals sacrebleu's command line, and missing coverage is reported, not scored."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kakugo.config import load_config
from kakugo.languages import resolve

BELEBELE_ROW = {
    "link": "https://example.org/x", "question_number": 1, "dialect": "yor_Latn", "ds": "2023",
    "flores_passage": "Ọ̀rọ̀ kan nípa omi àti ojú ọjọ́.", "question": "Kí ni ọ̀rọ̀ náà sọ nípa?",
    "mc_answer1": "omi", "mc_answer2": "iná", "mc_answer3": "afẹ́fẹ́", "mc_answer4": "ilẹ̀",
    "correct_answer_num": "1"}
MMLU_ROW = {"sample_id": "x/1", "subject": "anatomy", "subject_category": "STEM",
            "question": "Ewo ni egungun?", "option_a": "a", "option_b": "b", "option_c": "c",
            "option_d": "d", "answer": "B", "required_knowledge": "[]", "time_sensitive": "[]",
            "reference": "[]", "culture": "[]", "region": "[]", "country": "[]",
            "cultural_sensitivity_label": "CA", "is_annotated": False}


def fixture_data_dir(root: Path, real: Path) -> Path:
    """The real SIB-200 and FLORES folders plus small Belebele and Global-MMLU fixtures in
    their real schemas (neither is available offline)."""
    data = root / "eval-data"
    data.mkdir()
    for name in ("sib200", "flores200"):
        (data / name).symlink_to(real / name)
    (data / "belebele").mkdir()
    rows = [{**BELEBELE_ROW, "question_number": i, "correct_answer_num": str(i % 4 + 1)}
            for i in range(1, 9)]
    (data / "belebele" / "yor_Latn.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (data / "global_mmlu" / "yo").mkdir(parents=True)
    for split, n in (("dev", 5), ("test", 8)):
        rows = [{**MMLU_ROW, "sample_id": f"anatomy/{split}-{i}", "answer": "ABCD"[i % 4]}
                for i in range(n)]
        (data / "global_mmlu" / "yo" / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return data


@pytest.fixture()
def rendered(tmp_path, data_dir):
    from kakugo.evaluate.taskset import render

    data = fixture_data_dir(tmp_path, data_dir)
    config = load_config("configs/tiny-cpu.yaml", [
        f"evaluation.data_dir={data}",
        'evaluation.tasks=["sib200", "belebele", "global_mmlu", "flores_en_xx", "flores_xx_en"]'])
    langs = [resolve("gd", data), resolve("yo", data)]
    tasks, missing = render(config, langs, tmp_path / "tasks")
    return {t.name: t for t in tasks}, missing, tmp_path / "tasks"


def build(names, task_dir):
    from lm_eval.tasks import TaskManager, get_task_dict

    return get_task_dict(names, TaskManager(include_path=str(task_dir), include_defaults=False))


def registry_prompt(path: str, doc: dict) -> tuple[str, list[str], object]:
    from lm_eval import utils
    from lm_eval.tasks._yaml_loader import load_yaml

    from kakugo.evaluate.taskset import registry_dir

    config = load_yaml(registry_dir() / path, resolve_func=False)
    target = config["doc_to_target"]
    return (utils.apply_template(config["doc_to_text"], doc), config["doc_to_choice"],
            utils.apply_template(target, doc) if "{{" in str(target) else doc[target])


def test_coverage_gaps_are_reasons_not_zeros(rendered):
    tasks, missing, _ = rendered
    assert missing == {("gla_Latn", "belebele"): "not in Belebele",
                       ("gla_Latn", "global_mmlu"): "not in Global-MMLU"}
    assert {t.kind for t in tasks.values() if t.language == "yor_Latn"} == {
        "sib200", "belebele", "global_mmlu", "flores_en_xx", "flores_xx_en"}


def test_sib200_prompt_is_the_registry_prompt(rendered):
    _, _, task_dir = rendered
    task = build(["kakugo_sib200_gla_Latn"], task_dir)["kakugo_sib200_gla_Latn"]
    doc = task.test_docs()[0]
    text, choices, target = registry_prompt("afrobench/sib/prompt_1/sib_eng.yaml", doc)
    assert task.doc_to_text(doc) == text
    assert task.doc_to_choice(doc) == choices and task.doc_to_target(doc) == target
    assert len(task.test_docs()) == 204 and doc["text"].startswith("Tha am mùthadh")


def test_belebele_and_global_mmlu_prompts_are_the_registry_prompts(rendered):
    _, _, task_dir = rendered
    built = build(["kakugo_belebele_yor_Latn", "kakugo_global_mmlu_yor_Latn"], task_dir)
    for name, template in (("kakugo_belebele_yor_Latn", "belebele/_default_template_yaml"),
                           ("kakugo_global_mmlu_yor_Latn", "global_mmlu/full/yo/_yo_template_yaml")):
        task = built[name]
        doc = task.test_docs()[1]
        text, choices, target = registry_prompt(template, doc)
        assert task.doc_to_text(doc) == text
        assert task.doc_to_choice(doc) == choices
        assert str(task.doc_to_target(doc)) == str(target)


def test_flores_pairs_are_line_aligned_both_ways(rendered, data_dir):
    _, _, task_dir = rendered
    built = build(["kakugo_flores_en_xx_gla_Latn", "kakugo_flores_xx_en_gla_Latn"], task_dir)
    eng = (data_dir / "flores200/devtest/eng_Latn.devtest").read_text().splitlines()
    gla = (data_dir / "flores200/devtest/gla_Latn.devtest").read_text().splitlines()
    en_xx = built["kakugo_flores_en_xx_gla_Latn"]
    doc = en_xx.test_docs()[5]
    assert (doc["source"], doc["target"]) == (eng[5], gla[5])
    assert en_xx.doc_to_text(doc) == (
        f"Translate the following sentence from English to Scottish Gaelic.\n"
        f"English: {eng[5]}\nScottish Gaelic:")
    back = built["kakugo_flores_xx_en_gla_Latn"].test_docs()[5]
    assert (back["source"], back["target"]) == (gla[5], eng[5])


def test_corpus_chrfpp_equals_the_sacrebleu_command_line(tmp_path):
    from kakugo.evaluate.metrics import chrfpp, corpus_chrfpp

    refs = ["Tha an t-uisge fuar an-diugh.", "Chaidh mi dhan bhùth an-dè.", "Is toil leam tì."]
    hyps = ["Tha an uisge fuar an diugh.", "Chaidh mi don bhùth.", "Is toil leam cofaidh."]
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    cli = shutil.which("sacrebleu", path=str(Path(sys.executable).parent))
    out = subprocess.run([cli, str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"),
                          "-m", "chrf", "--chrf-word-order", "2", "-b"],
                         capture_output=True, text=True, check=True)
    ours = corpus_chrfpp([chrfpp([r], [h]) for r, h in zip(refs, hyps, strict=True)])
    assert round(ours, 1) == float(out.stdout.strip())


def test_flores_scores_the_answer_after_a_reasoning_block(rendered):
    """The FLORES task as lm-eval builds it: greedy, the run's repetition penalty, no
    newline stop, and its filter keeps the first line after a <think> block."""
    _, _, task_dir = rendered
    task = build(["kakugo_flores_xx_en_gla_Latn"], task_dir)["kakugo_flores_xx_en_gla_Latn"]
    kwargs = task.config.generation_kwargs
    assert (kwargs["temperature"], kwargs["repetition_penalty"], kwargs["until"]) == (0.0, 1.0, [])
    (ensemble,) = task._filters
    docs = task.test_docs()
    replies = [["<think>\nThe user wants English.\nEasy.\n</think>\n\nIt is cold today.\nMore"],
               ["It is raining.\n<think>late</think>"],
               ["<think>\nstill thinking when the tokens ran out"],
               ["\n  Plain answer  \nsecond line"]]
    from lm_eval.api.instance import Instance

    instances = [Instance("generate_until", doc, ("", {}), 0, resps=reply)
                 for doc, reply in zip(docs, replies, strict=False)]
    ensemble.apply(instances)
    assert [i.filtered_resps["none"] for i in instances] == [
        "It is cold today.", "It is raining.", "", "Plain answer"]
