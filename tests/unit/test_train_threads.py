"""OpenMP teams in a CPU training worker (kakugo.train.threads): run in a fresh process
each, with a gloo group of one rank made first, as Ray Train makes it before the loop."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist
from kakugo.train.threads import keep_openmp_teams_to_this_thread

def os_threads():
    return len(os.listdir("/proc/self/task"))

dist.init_process_group("gloo", store=dist.FileStore(sys.argv[1], 1), rank=0, world_size=1)
dist.barrier()
team = keep_openmp_teams_to_this_thread() if sys.argv[2] == "kept" else None
before = os_threads()
x = torch.ones(1 << 22)
dist.all_reduce(x)  # run on gloo's threads
dist.all_gather_into_tensor(torch.empty(1 << 22), x)
print(json.dumps({"team": team, "new_threads": os_threads() - before,
                  "threads_here": torch.get_num_threads()}), flush=True)
dist.destroy_process_group()
"""


def _run(tmp_path, mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # as Ray sets it for a 2-CPU worker
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / f"store-{mode}"), mode],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts Linux threads")
def test_collectives_start_no_openmp_team_besides_the_training_threads(tmp_path):
    kept = _run(tmp_path, "kept")
    assert (kept["team"], kept["threads_here"]) == (2, 2)
    assert kept["new_threads"] <= 0, kept  # (a thread that was ending may have gone)
    # without it, gloo's threads start teams of their own (a thread more each): libgomp
    # then manages more threads than the CPUs and keeps its teams' spins short
    stock = _run(tmp_path, "stock")
    assert stock["new_threads"] >= 1, stock
