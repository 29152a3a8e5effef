"""A local run on a machine where a Ray head once ran and was stopped by a signal (as our
own scripts stop it): Ray's temp folder still names that head's address. kakugo must start
a cluster of its own, not try to join the dead one (run after the other e2e modules: no
other cluster is up). Its processes, Serve's among them, get the run's settings. And from
a fresh home directory: the local cluster's token is the run's own, nothing is read from
or written to ~/.ray."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SCRIPT = """
import sys
from pathlib import Path

import ray
from ray import serve
from kakugo.config import load_config
from kakugo.run import connect_ray
from kakugo.serving import ensure_serve

config = load_config("configs/tiny-cpu.yaml", ["cluster.local_num_cpus=2",
                                                  "serving.port=" + sys.argv[1]])
connect_ray(config)
print("CPUs", ray.cluster_resources()["CPU"])
ensure_serve(config)
for proc in Path("/proc").iterdir():  # Serve's controller and proxy: the settings they read
    try:
        title = (proc / "cmdline").read_bytes().split(b"\\0")[0].decode()
        env = dict(kv.split("=", 1) for kv in (proc / "environ").read_bytes().decode(
            errors="replace").split("\\0") if "=" in kv)
    except OSError:
        continue
    if title in ("ray::ServeController", "ray::ProxyActor"):
        print(title, env.get("RAY_SERVE_CONTROL_LOOP_INTERVAL_S"),
              env.get("RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"))
serve.shutdown()
ray.shutdown()
"""


def test_a_dead_heads_leftovers_do_not_stop_a_local_run():
    # a short folder: Ray's sockets live below it, and a socket path may not exceed 107 bytes
    temp = Path(tempfile.mkdtemp(prefix="kakugo-", dir="/tmp"))
    (temp / "ray").mkdir()
    # what `ray start --head` leaves behind once its processes are killed
    (temp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    home = temp / "home"
    home.mkdir()
    env.update(TMPDIR=str(temp), RAY_TMPDIR=str(temp), HOME=str(home))
    try:
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(free_port())], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=240, check=False)
        home_ray = sorted(str(p.relative_to(home)) for p in (home / ".ray").rglob("*"))
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CPUs 2.0" in proc.stdout  # a cluster of its own, with the CPUs it asked for
    # Serve's loops at the config's pace (configs/tiny-cpu.yaml keeps the defaults)
    assert "ray::ServeController 1.0 1000" in proc.stdout, proc.stdout
    assert "ray::ProxyActor 1.0 1000" in proc.stdout, proc.stdout
    assert home_ray == [], home_ray  # no ~/.ray/auth_token made (or read) for the run
