"""The benchmarks' own parts that could be wrong without a benchmark run showing it: the
stand-in teacher's replies (they must pass the pipeline's schema and checks as a real
teacher's do) and the plots of the recorded results."""

import importlib.util
import json
import sys
from pathlib import Path

import jsonschema
import pytest

from kakugo.generate.translate import conversation_schema
from kakugo.prompts import list_schema

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def chat_request(user: str, schema: dict | None) -> dict:
    """What an engine pass sends the teacher's `chat_row` (Preprocess's request fields)."""
    from kakugo.config import load_config
    from kakugo.generate.engine_pass import Preprocess
    from kakugo.generate.requests import REQUEST_COLUMNS

    row = {c: "" for c in REQUEST_COLUMNS} | {"specific": False, "n": 0, "max_tokens": 64,
                                              "system": "s", "user": user,
                                              "schema": json.dumps(schema) if schema else ""}
    sent = Preprocess(load_config(None, []))(row)
    assert sent["method"] == "chat_row"
    return {"request_id": "0", "idx_in_batch": 0, **sent["request_kwargs"]}


def test_the_stand_in_teacher_answers_every_call_kind_as_its_schema_asks():
    from kakugo.serve.llm_server import TeacherServer

    standin = load("standin_teacher")
    # the method the engine passes call on the teacher's deployment
    assert callable(getattr(TeacherServer, "chat_row", None))
    assert callable(getattr(standin.StandinTeacher, "chat_row", None))
    schema = list_schema(7, 60)
    items = json.loads(standin.reply_text(chat_request("Seven topics, please", schema)))
    jsonschema.validate(items, schema)
    assert len(set(items["items"])) == 7
    other = json.loads(standin.reply_text(chat_request("Other topics", schema)))
    assert not set(other["items"]) & set(items["items"])  # distinct across requests

    turns = [{"role": "user", "content": "Hello there"},
             {"role": "assistant", "content": "Hi, how can I help?"}]
    user = "Translate this conversation:\n" + json.dumps({"turns": turns}, indent=1)
    schema = conversation_schema(2)
    reply = json.loads(standin.reply_text(chat_request(user, schema)))
    jsonschema.validate(reply, schema)
    assert reply["turns"] == turns  # the same lengths: the length-ratio check passes

    assert standin.reply_text(chat_request("Cò ris a tha thu?", None))


@pytest.mark.parametrize("result", sorted(p.name for p in (BENCHMARKS / "results").glob(
    "*.json") if json.loads(p.read_text()).get("benchmark") in (
        "generation", "training", "serving", "scaling", "scaling-paper")))
def test_every_recorded_result_is_drawn(result, tmp_path):
    plots = load("plots")
    copy = tmp_path / result
    copy.write_text((BENCHMARKS / "results" / result).read_text())
    out = plots.plot(copy)
    assert out is not None and out.stat().st_size > 0


def test_a_saved_result_is_headed_written_and_drawn(tmp_path):
    """Every CPU benchmark saves through one function: the result is headed by its name,
    the machine and the date (a date the benchmark states itself is kept: generation keeps
    the date of the part it did not rerun), written where asked and drawn next to it."""
    plots = load("plots")
    result = {"date": "2026-01-02", "model": "tiny",
              "cases": {"whole batch": {"median_seconds": {"expression (Stage.read)": 1.0,
                                                            "row function": 2.5},
                                        "row_function_over_expression": 2.5, "rows": 10}}}
    path = plots.save_result("step_reads", result, tmp_path / "sub" / "mine.json")
    saved = json.loads(path.read_text())
    assert list(saved)[:3] == ["benchmark", "machine", "date"]
    assert saved["benchmark"] == "step_reads" and saved["date"] == "2026-01-02"
    assert saved["machine"] == plots.cpu_machine() and "CPUs" in saved["machine"]
    assert saved["cases"] == result["cases"]
    assert path.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_the_serving_load_runs_on_until_its_least_number_of_requests():
    """One client for a zero-second run still sends the least number of requests asked
    (a rate from a handful of requests is a few % off per request), to a local server."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Chat(BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            body = json.dumps({"usage": {"completion_tokens": 3}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Chat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        serving = load("serving")
        out = asyncio.run(serving.closed_loop(url, "m", 1, 0, 8, min_requests=5))
    finally:
        server.shutdown()
    assert (out["requests"], out["errors"]) == (5, 0) and len(seen) == 5
    assert out["output_tokens_per_second"] > 0 and seen[0]["max_tokens"] == 8


@pytest.mark.parametrize("side", ["ray_serve", "vllm_openai_server"])
def test_a_serving_result_of_one_server_is_drawn(side, tmp_path):
    """`serving.py --only serve|vllm` measures one server: its result is drawn too."""
    plots = load("plots")
    recorded = json.loads((BENCHMARKS / "results" / "serving.json").read_text())
    other = {"ray_serve": "vllm_openai_server", "vllm_openai_server": "ray_serve"}[side]
    del recorded[other], recorded["serve_over_vllm"]
    out = plots.save_result("serving", recorded, tmp_path / "serving.json")
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("budget", [None, 4096])
def test_the_direct_engine_is_given_the_deployments_engine_settings(budget):
    """The steady-state ratio compares the teacher's deployment with `vllm.LLM` on the same
    requests and engine settings: the same per-step token budget (vLLM's default differs
    between its server and `LLM`, so the direct engine is given the server's when the
    config leaves it to vLLM), the same engine seed, and no per-request seed that the
    pipeline's requests do not carry (a seeded request takes vLLM's slower sampling path)."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    from kakugo.config import load_config
    from kakugo.serving import Teacher

    generation = load("generation")
    overrides = ["teacher.engine.accelerator=cpu"] + (
        [f"teacher.engine.max_num_batched_tokens={budget}"] if budget else [])
    config = load_config(None, overrides)
    deployed = Teacher(config).llm_config()["engine_kwargs"]
    args = generation.direct_args(config, "folder", ("system", "user"))
    server_default = EngineArgs.get_batch_defaults(1)[0][UsageContext.OPENAI_API_SERVER]
    assert deployed.get("max_num_batched_tokens") == budget
    assert args["engine_kwargs"]["max_num_batched_tokens"] == (budget or server_default)
    assert args["engine_kwargs"]["seed"] == deployed["seed"]
    assert "seed" not in args["sampling"]
