"""An autoscaling Ray cluster on this machine: a head started with `ray start --head` and
Ray's own autoscaler (cluster/local-autoscaling.yaml), which starts and stops the worker
nodes; all of it in the head's process group and stopped through it (never a machine-wide
`ray stop`)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO, TINY_STUDENT, free_port

RAY = str(Path(sys.executable).with_name("ray"))
# The tiny random student as the teacher too, with short replies: the job's whole path in
# minutes on 2 cores (the e2e tests add what each of them exercises).
TINY_JOB = [*TINY_STUDENT, "teacher.model=embedded:tiny-granite", "teacher.reasoning=none",
            "filters.basic=annotate", "filters.min_rows_per_language=2",
            "training.placement_strategy=STRICT_SPREAD", "training.max_steps=2",
            # two steps however little the random teacher writes (its list replies vary:
            # 2 to 10 packed training rows seen, and one step takes 2)
            "training.epochs=2",
            # short list items: a random model's list replies then always finish, so
            # every context text yields a prompt (and a decontamination reject); short
            # free-text replies (a random model's never finish anyway): decoding steps are
            # most of an engine pass's time on 2 cores
            "teacher.sampling.list_item_max_chars=60", "teacher.sampling.max_tokens=24",
            "translation.max_tokens=24", "evaluation.backend=hf"]


def ray_env(token: str) -> dict[str, str]:
    """The environment of the Ray nodes (and so of the jobs they run) and of `ray` CLI calls:
    this venv first on PATH, so that a job's `python` is the one kakugo is installed in, and
    the cluster's auth token."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
            "HF_HUB_OFFLINE": "1"}


def jobs_api(jobs: str, token: str, path: str) -> dict | list | None:
    """GET `{jobs}/api/jobs/{path}` from the cluster's Jobs REST API (no CLI process: each
    `ray job ...` costs about 3 CPU-seconds on 2 cores); None while it does not answer."""
    try:
        reply = httpx.get(f"{jobs}/api/jobs/{path}", timeout=30,
                          headers={"Authorization": f"Bearer {token}"})
    except httpx.TransportError:
        return None
    return reply.json() if reply.status_code == 200 else None


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


class NodeWatch(threading.Thread):
    """Every few seconds, the worker nodes alive: `seen` (every id ever alive) and `most`
    (the most alive at once), for as long as the cluster runs."""

    def __init__(self, cluster: dict, every_s: float = 5):
        super().__init__(name="node-watch", daemon=True)
        self.cluster, self.every_s = cluster, every_s
        self.seen: set[str] = set()
        self.most = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            alive = worker_nodes(self.cluster) or set()
            self.seen |= alive
            self.most = max(self.most, len(alive))


@pytest.fixture(scope="module")
def autoscaling_cluster(s3_server, tmp_path_factory):
    """The head of cluster/local-autoscaling.yaml (Ray's own autoscaler, fake multi-node
    provider: worker nodes are raylets it starts and stops as a cloud provider's nodes would
    be; the head offers no CPUs), with its own GCS port and auth token: {"jobs": the job
    server's URL on 127.0.0.1, "token", "temp_dir", "config": the cluster config, "nodes": a
    NodeWatch}. Started after the S3 server: the nodes take the head's environment, so every
    worker process sees its endpoint and test credentials."""
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
    cluster["nodes"] = NodeWatch(cluster)
    try:
        for _ in range(90):
            if jobs_api(cluster["jobs"], token, "") is not None:
                break
            time.sleep(2)
        else:
            pytest.fail("the head did not start: " + (folder / "head.log").read_text())
        cluster["nodes"].start()
        yield cluster
    finally:  # the autoscaler's nodes are processes of the head's process group
        cluster["nodes"].stopped.set()
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
