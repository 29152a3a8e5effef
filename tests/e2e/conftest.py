"""A two-node Ray cluster on this machine, started the way users start one: a head with
`ray start --head` and a second node joined with `ray start --address=...`, each in its
own process group and stopped through it (never a machine-wide `ray stop`)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_STUDENT, free_port

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


def _alive_nodes(address: str, token: str) -> int:
    status = subprocess.run([RAY, "status", f"--address={address}"], env=ray_env(token),
                            capture_output=True, text=True, check=False)
    return status.stdout.count(" node_") if status.returncode == 0 else 0


@pytest.fixture(scope="module")
def two_node_cluster(s3_server, tmp_path_factory):
    """A head + one more node (4 logical CPUs each): {"address": GCS address, "jobs": the
    job server's URL on 127.0.0.1, "token": the cluster's auth token (its own: the nodes,
    the CLI calls and the Jobs REST API requests share it)}. Started after the S3 server so
    that every worker process sees its endpoint and test credentials."""
    token = secrets.token_hex(32)
    logs = tmp_path_factory.mktemp("ray-nodes")
    port, dashboard = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=4"]
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}",
         f"--temp-dir={tempfile.mkdtemp(prefix='kakugo-e2e-ray-', dir='/tmp')}", *common],
        stdout=(logs / "head.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True, env=ray_env(token))
    nodes = [head]
    try:
        for _ in range(90):
            if _alive_nodes(address, token) >= 1:
                break
            time.sleep(2)
        # its own temp dir, as on another host: two nodes sharing one would unpack a job's
        # working_dir into the same folder, each over the other
        nodes.append(subprocess.Popen(
            [RAY, "start", f"--address={address}",
             f"--temp-dir={tempfile.mkdtemp(prefix='kakugo-e2e-ray-node-', dir='/tmp')}",
             *common],
            stdout=(logs / "node.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True, env=ray_env(token)))
        for _ in range(90):
            if _alive_nodes(address, token) >= 2:
                break
            time.sleep(2)
        else:
            pytest.fail("the second Ray node did not join: " + (logs / "node.log").read_text())
        jobs = f"http://127.0.0.1:{dashboard}"
        for _ in range(60):  # the job server comes up with the dashboard, after the node
            if jobs_api(jobs, token, "") is not None:
                break
            time.sleep(2)
        else:
            pytest.fail("the job server did not start: " + (logs / "head.log").read_text())
        yield {"address": address, "jobs": jobs, "token": token}
    finally:
        for proc in reversed(nodes):
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:  # what it started is in its process group
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
