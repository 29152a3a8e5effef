"""The main job as a cluster runs it: `ray job submit -- python jobs/distill.py` (as
KubeRay's RayJob submits it) for one language on the tiny-cpu config, output on a real S3
server, against an autoscaling cluster: Ray's own autoscaler with its fake multi-node
provider (cluster/local-autoscaling.yaml), whose head offers no CPUs, so the teacher's
engine, Ray Data's stages and the training workers run only on worker nodes the autoscaler
adds for them (training's two workers are spread over two nodes), and removes once idle.

The job is first stopped mid-generation (`ray job stop` once the first engine pass is
written); submitted again, that resumed job loses its S3 endpoint once the evaluation has
written a result and must fail with a storage error; submitted once more with the
endpoint back, it must finish with the counts an uninterrupted run has (they follow from
the config: list replies are count-exact) and no row twice. A last submission must find
everything done; then the idle worker nodes go: 0 -> N -> 0. Two languages sharing one
engine pass, and a teacher whose replicas may scale, are covered by
tests/integration/test_engine_pass.py.

The tiny random student stands in as the teacher: the engine path is the same (a Ray Serve
LLM deployment fed by Ray Data LLM processors) and it is ~100x faster on 2 cores; its replies
are noise, but schema-constrained. Free-text replies of a random model rarely finish, so
the basic filter only annotates here. The embedded SmolLM2 teacher itself is exercised in
tests/integration/test_engine_pass.py and by `make demo`.
"""

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import boto3
import pyarrow.dataset as pads
import pytest

from kakugo.config import load_config
from kakugo.dataset.stage import DatasetStage
from kakugo.generate.pipeline import GenerationStage
from kakugo.storage import Storage
from tests.conftest import REPO
from tests.e2e.conftest import RAY, TINY_JOB, jobs_api, ray_env, worker_nodes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

IDLE_REMOVAL_S = 240  # idle_timeout_minutes 0.5, plus the autoscaler's update period

OVERRIDES = [*TINY_JOB, "training.checkpoint_every_steps=2",
             # evaluation in-process and short: the Serve path of evaluation is covered by
             # tests/integration/test_evaluate.py
             'evaluation.tasks=["sib200", "flores_en_xx"]', "evaluation.limit=4",
             "evaluation.max_gen_tokens=16"]
STEPS = GenerationStage.steps
LANGS = ("gla_Latn",)
JOB_TIMEOUT_S = 1200
TEACHER_READY = "teacher smollm2-135m ready"
TRAIN_WORKER = "(RayTrainWorker pid="  # Ray's prefix of a training worker's log lines


def submit(cluster: dict, out: str, job_id: str) -> None:
    """`ray job submit --no-wait` of jobs/distill.py as KubeRay's RayJob submits it: the
    installed tree's paths, no working_dir upload. (The fake provider's nodes share the
    head's session folder, so a job's unpacked working_dir is one folder for all of them,
    and a node on which it is unused deletes it under the driver; `--working-dir .`, the
    README's local command, is tests/e2e/test_demo.py's.)"""
    args = ["--config", f"{REPO}/configs/tiny-cpu.yaml", "--languages", "Scottish Gaelic",
            "--output", out]
    for item in OVERRIDES:
        args += ["--set", item]
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1",
                                "KAKUGO_DATA_DIR": os.environ["KAKUGO_DATA_DIR"]}}
    proc = subprocess.run([RAY, "job", "submit", "--address", cluster["jobs"], "--no-wait",
                           "--submission-id", job_id,
                           "--runtime-env-json", json.dumps(runtime_env), "--",
                           "python", f"{REPO}/jobs/distill.py", *args],
                          env=ray_env(cluster["token"]), capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, f"ray job submit failed:\n{proc.stderr[-3000:]}"


def ray_job(cluster: dict, *args: str) -> str:
    """`ray job ...` against the cluster's job server (with the cluster's auth token)."""
    proc = subprocess.run([RAY, "job", *args, "--address", cluster["jobs"]],
                          env=ray_env(cluster["token"]),
                          capture_output=True, text=True, check=True, timeout=120)
    return proc.stdout + proc.stderr  # the CLI's own messages go to stderr


def job_status(cluster: dict, job_id: str) -> str:
    """The job's status from the Jobs REST API (polled often: no CLI process each time)."""
    job = jobs_api(cluster["jobs"], cluster["token"], job_id)
    assert job is not None, f"the job server does not answer for {job_id}"
    return job["status"]


def job_logs(cluster: dict, job_id: str) -> str:
    return ray_job(cluster, "logs", job_id)


def wait_for(cluster: dict, job_id: str, done=None, timeout: float = JOB_TIMEOUT_S,
             poll_s: float = 3) -> str:
    """Poll until the job ends (or `done()` is true); its status. On a timeout the job is
    stopped and the test fails with the kakugo lines of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job_status(cluster, job_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED") or (done and done()):
            return status
        time.sleep(poll_s)
    subprocess.run([RAY, "job", "stop", "--address", cluster["jobs"], job_id],
                   env=ray_env(cluster["token"]),
                   capture_output=True, check=False, timeout=120)  # best effort
    pytest.fail(f"job {job_id} still running after {timeout:.0f} s:\n" + tail(cluster, job_id))


def tail(cluster: dict, job_id: str, lines: int = 60) -> str:
    """The job log's kakugo and error lines (the whole log is mostly Ray's progress)."""
    log = job_logs(cluster, job_id).splitlines()
    keep = [ln for ln in log if "kakugo" in ln or "Error" in ln or "error:" in ln]
    return "\n".join(keep[-lines:])


def run_to_success(cluster: dict, out: str, job_id: str) -> str:
    submit(cluster, out, job_id)
    status = wait_for(cluster, job_id)
    assert status == "SUCCEEDED", f"job {job_id} {status}:\n" + tail(cluster, job_id)
    return job_logs(cluster, job_id)


def listing(s3, bucket: str, prefix: str, skip: tuple[str, ...] = ()) -> dict:
    """Every object under `prefix` with its ETag and modification time."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: (o["ETag"], o["LastModified"]) for p in pages
            for o in p.get("Contents", [])
            if o["Key"].removeprefix(prefix) not in skip and not o["Key"].endswith("/")}


@pytest.fixture(scope="module")
def run(s3_server, autoscaling_cluster):
    bucket = "kakugo-e2e-run"
    s3 = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket=bucket)
    out = f"s3://{bucket}/runs/demo"
    storage = Storage(out)
    cluster = autoscaling_cluster
    assert worker_nodes(cluster) == set()  # nothing but the head before the job
    # 1. stopped mid-generation: once the first engine pass is written
    submit(cluster, out, "kakugo-e2e-stopped")
    first_pass = f"generate/{STEPS[0]}/_manifest.json"
    status = wait_for(cluster, "kakugo-e2e-stopped", done=lambda: storage.exists(first_pass))
    assert status == "RUNNING", f"job ended before it could be stopped ({status}):\n" + tail(
        cluster, "kakugo-e2e-stopped")
    ray_job(cluster, "stop", "kakugo-e2e-stopped")
    assert wait_for(cluster, "kakugo-e2e-stopped", timeout=120) == "STOPPED"
    interrupted = {"stopped_log": job_logs(cluster, "kakugo-e2e-stopped"),
                   "dataset_before": storage.exists("dataset/sft/_manifest.json"),
                   "first_pass_before": listing(s3, bucket, f"runs/demo/generate/{STEPS[0]}/")}
    # 2. submitted again: resumes generation and goes on; the S3 endpoint goes down once
    # the evaluation has written a result, and the job must fail with a storage error
    submit(cluster, out, "kakugo-e2e-resumed")
    status = wait_for(cluster, "kakugo-e2e-resumed", poll_s=0.5,
                      done=lambda: bool(storage.list("eval/gla_Latn", recursive=True)))
    assert status == "RUNNING", f"job ended before the outage ({status}):\n" + tail(
        cluster, "kakugo-e2e-resumed")
    s3_server.stop()
    try:
        outage_status = wait_for(cluster, "kakugo-e2e-resumed", timeout=300)
    finally:
        s3_server.start()  # same address, same objects
    written_before = listing(s3, bucket, "runs/demo/")
    # 3. submitted again with the endpoint back: finishes
    log = run_to_success(cluster, out, "kakugo-e2e-completed")
    return {"out": out, "storage": storage, "s3": s3, "bucket": bucket, "log": log,
            "resumed_log": job_logs(cluster, "kakugo-e2e-resumed"),
            "outage_status": outage_status, "written_before_outage": written_before,
            "cluster": cluster, **interrupted}


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
    # no credential in the job logs, nor in any manifest, card, report or metrics file
    texts = [run["log"], run["resumed_log"], run["stopped_log"]]
    pages = run["s3"].get_paginator("list_objects_v2").paginate(Bucket=run["bucket"])
    for page in pages:
        for obj in page.get("Contents", []):
            if obj["Key"].endswith((".json", ".jsonl", ".md", ".csv", ".yaml", ".txt")):
                texts.append(run["s3"].get_object(Bucket=run["bucket"], Key=obj["Key"])[
                    "Body"].read().decode())
    assert len(texts) > 10
    for secret in (s3_server["AWS_SECRET_ACCESS_KEY"], s3_server["AWS_ACCESS_KEY_ID"]):
        assert not [t for t in texts if secret in t]


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
        assert set(json.loads(row["meta"])) == {"revised", "original_prompt", "task"}
        if row["category"] == "context":
            assert row["context"] and row["user"].startswith(row["context"])
            assert json.loads(row["meta"])["task"] in ("translate", "summarize", "improve",
                                                       "classify", "qa")


def test_the_stopped_job_was_stopped_mid_generation(run):
    assert run["stopped_log"].count(TEACHER_READY) == 1
    assert not run["dataset_before"]


def test_the_resumed_job_deploys_the_teacher_once_and_redoes_no_finished_pass(run):
    assert run["resumed_log"].count(TEACHER_READY) == 1
    assert f"generate/{STEPS[0]}: done earlier, skipped" in run["resumed_log"]
    # the pass finished before the stop is untouched (same objects, same times)
    assert run["first_pass_before"] and listing(
        run["s3"], run["bucket"], f"runs/demo/generate/{STEPS[0]}/") == run["first_pass_before"]
    for step in STEPS:  # nothing was written twice
        ids = Counter(r["id"] for r in rows(run, step))
        assert ids and max(ids.values()) == 1, step


def test_an_s3_outage_fails_the_job_with_a_storage_error_and_the_rerun_completes(run):
    assert run["outage_status"] == "FAILED"
    lines = run["resumed_log"].splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]  # on a line of its own
    assert errors and "storage error while" in errors[-1], "\n".join(lines[-30:])
    assert "s3://kakugo-e2e-run/runs/demo/" in errors[-1], errors
    # the rerun redid no finished stage (no engine, no training worker), finished the
    # evaluation and left every object written before the outage as it was
    assert TEACHER_READY not in run["log"] and TRAIN_WORKER not in run["log"]
    after = listing(run["s3"], run["bucket"], "runs/demo/")
    summaries = ("run.json", "status.json", "report.", "eval/results.", "eval/plots/")
    before = {k: v for k, v in run["written_before_outage"].items()
              if not k.removeprefix("runs/demo/").startswith(summaries)}
    assert before and {k: after[k] for k in before} == before
    assert run["storage"].read_json("report.json")["status"]["done"] == 1


def test_progress_lines_give_rows_done_and_eta(run):
    lines = [ln for ln in run["resumed_log"].splitlines()
             if "generate/respond:" in ln and "ETA" in ln]
    assert lines, "no progress line for the respond pass"
    assert "rows/s" in lines[-1] and "gla_Latn" in lines[-1]
    assert "kakugo.train: gla_Latn step 2/2, loss" in run["resumed_log"]


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
    for step in ("seeds", "respond"):  # the teacher's replica-seconds (one replica)
        engine = run["storage"].read_json(f"generate/{step}/_manifest.json")
        assert engine["device"] == "CPU"
        assert 0 < engine["replica_seconds"] <= engine["wall_seconds"] + 1, engine
    for entry in m["languages"].values():
        assert entry["completion_tokens"] > 0 and entry["engine_seconds"] > 0


def test_the_batch_report_has_the_language_its_scores_and_its_cost(run):
    report = run["storage"].read_json("report.json")
    (lang,) = report["languages"]
    assert lang["flores_code"] == "gla_Latn" and lang["status"] == "done"
    assert lang["generated_rows"]["respond"] == len(rows(run, "respond"))
    assert lang["dataset_rows"] == len(dataset_rows(run, "gla_Latn", "data"))
    assert lang["training"]["steps"] == 2
    assert {s["task"] for s in lang["evaluation"]} == {"sib200", "flores_en_xx"}
    for stage in ("generate", "dataset", "train", "evaluate"):  # every stage is priced
        assert lang["usd"][stage] > 0, stage
    assert lang["usd"]["total"] == pytest.approx(sum(
        lang["usd"][s] for s in ("generate", "dataset", "train", "evaluate")), abs=1e-3)
    assert {e["device"] for e in report["cost"]["ledger"]} == {"CPU"}
    assert report["cost"]["within_paper_figure"] is True
    markdown = run["storage"].read_text("report.md")
    assert "under the paper's $50 per language" in markdown
    assert "| gla_Latn | Scottish Gaelic | done |" in markdown


def test_submitting_again_does_no_engine_or_training_work(run):
    rewritten = ("run.json", "status.json", "report.json", "report.md")
    before = listing(run["s3"], run["bucket"], "runs/demo/", rewritten)
    log = run_to_success(run["cluster"], run["out"], "kakugo-e2e-again")
    assert log.count("done earlier, skipped") == (
        len(STEPS) + len(DatasetStage.steps) + len(LANGS))
    assert TEACHER_READY not in log  # no engine started
    assert TRAIN_WORKER not in log  # no training worker
    assert "evaluate gla_Latn" not in log  # no lm-eval run
    assert listing(run["s3"], run["bucket"], "runs/demo/", rewritten) == before


def test_an_output_root_of_the_earlier_layout_resumes(run):
    """Roots written before stage 4 had one name kept it under assemble/ (steps candidates
    and dataset): the job redoes stage 4 into dataset/ (the same SFT sets) and nothing
    else."""
    s3, bucket, root = run["s3"], run["bucket"], "runs/demo/"
    sets = {k: v for k, v in listing(s3, bucket, root).items()
            if k.startswith(f"{root}gla_Latn/dataset/data/")}
    for key in list(listing(s3, bucket, f"{root}dataset/")):
        old = key.replace(f"{root}dataset/sft/", f"{root}assemble/dataset/").replace(
            f"{root}dataset/candidates/", f"{root}assemble/candidates/")
        s3.copy_object(Bucket=bucket, Key=old, CopySource={"Bucket": bucket, "Key": key})
        s3.delete_object(Bucket=bucket, Key=key)
    kept = ("run.json", "status.json", "report.json", "report.md")
    others = {k: v for k, v in listing(s3, bucket, root, kept).items()
              if not k.startswith((f"{root}assemble/", f"{root}gla_Latn/dataset/"))}
    log = run_to_success(run["cluster"], run["out"], "kakugo-e2e-old-layout")
    assert log.count("done earlier, skipped") == len(STEPS) + len(LANGS)  # generate, train
    assert "dataset/candidates (step 1 of 2): running" in log
    assert TEACHER_READY not in log and TRAIN_WORKER not in log
    assert "evaluate gla_Latn" not in log
    after = listing(s3, bucket, root, kept)
    assert {k: v for k, v in after.items() if k in others} == others  # nothing else redone
    assert f"{root}dataset/sft/_manifest.json" in after
    assert len([k for k in after if k.startswith(f"{root}gla_Latn/dataset/data/")]) == len(sets)


def dataset_rows(run, lang, part):
    storage = run["storage"]
    return pads.dataset(storage.path(f"{lang}/dataset/{part}"), format="parquet",
                        filesystem=storage.fs).to_table().to_pylist()


def test_translations_are_checked_and_every_candidate_has_a_verdict(run):
    candidates = rows(run, "candidates", root="dataset")
    translated = [r for r in candidates if r["kind"] == "translated"]
    assert len(translated) == len(LANGS) * 8
    assert all(r["translation"] for r in translated)
    for r in candidates:
        assert r["basic"] and r["empty"] and r["decontamination"]
        assert re.fullmatch(r"|ok|unknown|(wrong|uncertain):\w+", r["language_id"]), r
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
        assert manifest["total_steps"] == 2 and manifest["metrics"]["step"] == 2
        nodes = manifest["metrics"]["nodes_per_rank"]
        assert len(nodes) == 2 and len(set(nodes)) == 2  # STRICT_SPREAD: one rank per node
        assert manifest["worker_seconds"] > 0
        files = set(run["storage"].list(f"{lang}/model"))
        assert {f"{lang}/model/{name}" for name in
                ("model.safetensors", "config.json", "tokenizer.json", "README.md",
                 "generation_config.json")} <= files
    config = json.loads(run["storage"].read_text("gla_Latn/model/config.json"))
    assert config["model_type"] == "granitemoehybrid"


def test_the_results_notebook_runs_headless_on_the_run(run, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(REPO / "notebooks" / "results.ipynb", as_version=4)
    monkeypatch.setenv("KAKUGO_RUN", run["out"])  # the kernel inherits the S3 settings too
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # dataset, cost, scores
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                     for o in outputs)
    assert f"run at {run['out']}: 1 language(s)" in text
    for expected in ("gla_Latn", "sib200", "flores_en_xx", "translation", "total"):
        assert expected in text, expected


def test_push_dry_run_checks_the_real_cards(run):
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("kakugo")), "push", "--config",
         "configs/tiny-cpu.yaml", "--languages", "gd", "--output", run["out"],
         "--set", "publish.namespace=kakugo-e2e", "--dry-run"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "would push gla_Latn dataset -> kakugo-e2e/kakugo-gla" in proc.stdout
    assert "would push gla_Latn model -> kakugo-e2e/kakugo-3B-gla" in proc.stdout
    assert "model.safetensors" in proc.stdout and "rejects" not in proc.stdout


def test_the_autoscaler_added_nodes_for_the_jobs_and_removes_them_once_idle(run):
    """Last in this module: every job is over by now."""
    cluster, nodes = run["cluster"], run["cluster"]["nodes"]
    # the teacher's node, then a second for training's spread workers
    assert nodes.most >= 2 and len(nodes.seen) >= 2, (nodes.most, nodes.seen)
    max_workers = cluster["config"]["available_node_types"]["cpu_worker"]["max_workers"]
    assert len(nodes.seen) <= max_workers * 5  # nodes come and go, but not without bound
    # idle nodes go once the jobs are over; the monitor logs their removal after it has
    # terminated them (up to ~0.5 s later), and the state API may miss an answer: both
    # are waited for, not read once
    monitor_log = Path(cluster["temp_dir"]) / "session_latest" / "logs" / "monitor.log"
    removed = re.compile(r"Removing \d+ nodes of type cpu_worker \(idle\)")
    deadline = time.monotonic() + IDLE_REMOVAL_S
    while time.monotonic() < deadline:
        alive = worker_nodes(cluster)
        if alive == set() and removed.search(monitor_log.read_text()):
            break
        time.sleep(5)
    assert alive == set(), f"still up {IDLE_REMOVAL_S} s after the jobs: {alive}"
    monitor = monitor_log.read_text()
    assert re.search(r"Adding \d+ node\(s\) of type cpu_worker", monitor)
    assert removed.search(monitor), "the monitor never logged the idle nodes' removal"
