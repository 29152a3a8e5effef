"""The job on an autoscaling cluster: Ray's own autoscaler with its fake multi-node provider
(cluster/local-autoscaling.yaml), whose worker nodes are real raylets that the head's
autoscaler starts and stops as a cloud provider's nodes would be. The head offers no CPUs,
so the teacher's engine, Ray Data's stages and the training workers can only run on nodes
the autoscaler adds for them: training's two workers are spread over two nodes
(STRICT_SPREAD). The job is submitted as the KubeRay RayJob submits it, with the paths of
the installed tree and no working_dir upload. The teacher's deployment autoscales between 1
and 2 replicas, its replica-seconds counted as they run. It must succeed with every stage's
output,
and once the job is over the idle nodes must be removed: 0 -> N -> 0 worker nodes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO, free_port
from tests.e2e.conftest import RAY, TINY_JOB, jobs_api, ray_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

OVERRIDES = [*TINY_JOB, "training.num_workers=2",
             # the teacher's replicas follow the pending work: 1 to 2
             "teacher.engine.max_replicas=2",
             'evaluation.tasks=["sib200"]', "evaluation.limit=4"]
IDLE_REMOVAL_S = 240  # idle_timeout_minutes 0.5, plus the autoscaler's update period


def worker_nodes(cluster: dict) -> set[str] | None:
    """Ids of the alive nodes other than the head, from the state API (None: no answer)."""
    try:
        reply = httpx.get(f"{cluster['jobs']}/api/v0/nodes", params={"limit": 100},
                          headers={"Authorization": f"Bearer {cluster['token']}"}, timeout=30)
    except httpx.TransportError:
        return None
    if reply.status_code != 200:
        return None
    nodes = reply.json()["data"]["result"]["result"]
    return {n["node_id"] for n in nodes if n["state"] == "ALIVE" and not n["is_head_node"]}


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    """The head of cluster/local-autoscaling.yaml with its own GCS port and auth token."""
    token = secrets.token_hex(32)
    folder = tmp_path_factory.mktemp("autoscaling")
    port, dashboard = free_port(), free_port()
    config = yaml.safe_load((REPO / "cluster" / "local-autoscaling.yaml").read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{port}"
    config_path = folder / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(config))
    temp_dir = tempfile.mkdtemp(prefix="kakugo-e2e-auto-", dir="/tmp")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=0", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--autoscaling-config={config_path}", f"--temp-dir={temp_dir}"],
        stdout=(folder / "head.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True, env={**ray_env(token), "RAY_FAKE_CLUSTER": "1"})
    cluster = {"jobs": f"http://127.0.0.1:{dashboard}", "token": token,
               "temp_dir": temp_dir, "config": config}
    try:
        for _ in range(90):
            if jobs_api(cluster["jobs"], token, "") is not None:
                break
            time.sleep(2)
        else:
            pytest.fail("the head did not start: " + (folder / "head.log").read_text())
        yield cluster
    finally:  # the autoscaler's nodes are processes of the head's process group
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)


def test_the_autoscaler_adds_nodes_for_the_job_and_removes_them_after(autoscaling_cluster,
                                                                       tmp_path):
    cluster = autoscaling_cluster
    assert worker_nodes(cluster) == set()  # nothing but the head before the job
    out = tmp_path / "run"
    args = ["--config", str(REPO / "configs" / "tiny-cpu.yaml"), "--languages",
            "Scottish Gaelic", "--output", str(out), "--quiet"]
    for item in OVERRIDES:
        args += ["--set", item]
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1",
                                "KAKUGO_DATA_DIR": os.environ["KAKUGO_DATA_DIR"]}}
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", cluster["jobs"], "--no-wait",
         "--submission-id", "kakugo-auto", "--runtime-env-json", json.dumps(runtime_env),
         "--", "python", str(REPO / "jobs" / "distill.py"), *args],
        env=ray_env(cluster["token"]), capture_output=True, text=True, timeout=120,
        check=False)
    assert submit.returncode == 0, submit.stderr[-3000:]

    seen: set[str] = set()
    most = 0
    deadline = time.monotonic() + 1500
    status = "PENDING"
    while time.monotonic() < deadline:
        status = jobs_api(cluster["jobs"], cluster["token"], "kakugo-auto")["status"]
        alive = worker_nodes(cluster) or set()
        seen |= alive
        most = max(most, len(alive))
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(5)
    log = httpx.get(f"{cluster['jobs']}/api/jobs/kakugo-auto/logs", timeout=30,
                    headers={"Authorization": f"Bearer {cluster['token']}"}).json()["logs"]
    assert status == "SUCCEEDED", log[-5000:]

    # the teacher's node, then a second for training's spread workers
    assert most >= 2 and len(seen) >= 2, (most, seen)
    max_workers = cluster["config"]["available_node_types"]["cpu_worker"]["max_workers"]
    assert len(seen) <= max_workers * 3  # nodes come and go, but not without bound

    report = json.loads((out / "report.json").read_text())
    [lang] = report["languages"]
    assert lang["status"] == "done", lang
    assert (out / "gla_Latn" / "dataset" / "data").is_dir()
    for step in ("seeds", "respond"):  # the teacher's replica-seconds, counted as they ran
        engine = json.loads((out / "generate" / step / "_manifest.json").read_text())
        assert engine["device"] == "CPU"
        assert 0 < engine["replica_seconds"] <= 2 * engine["wall_seconds"] + 5, engine
    manifest = json.loads((out / "train" / "gla_Latn" / "_manifest.json").read_text())
    assert manifest["total_steps"] == 2 and manifest["model"]
    assert list((out / "eval" / "gla_Latn").glob("*/sib200.json"))

    # idle nodes go once the job is over; the monitor logs their removal after it has
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
    assert alive == set(), f"still up {IDLE_REMOVAL_S} s after the job: {alive}"
    monitor = monitor_log.read_text()
    assert re.search(r"Adding \d+ node\(s\) of type cpu_worker", monitor)
    assert removed.search(monitor), "the monitor never logged the idle nodes' removal"
