"""Generation benchmark: prints JSON and writes benchmarks/results/generation.json.

1. batch vs per-language: the generation stage for N languages in one pipeline (engines
   shared by all languages) vs one pipeline per language, same config: wall-time ratio.
2. pipeline vs direct engine: output tokens/s of the pipeline's `respond` pass vs the same
   requests sent straight to one in-process vLLM engine (`vllm.LLM.chat`), both counting
   engine start-up: ratio.
3. steady state (`steady_state`): `--steady-requests` (2,000) answer requests (FLORES-200
   sentences, a fixed reply budget) through one engine pass of the pipeline (Ray Data ->
   the teacher's Serve deployment -> parquet) against the same requests through
   `vllm.LLM.chat`, same engine settings, run before and after the pass (the ratio is
   against their mean). Start-up is reported apart: the deployment's, the direct
   engine's, and the pass's own until its first batch is written; the ratio is output
   tokens/s after that (the direct engine: from its first call).

    python benchmarks/generation.py --parts steady --steady-max-tokens 32 \
        --set teacher.reasoning=none          # the goal, on the config's teacher
    python benchmarks/generation.py --set teacher.model=embedded:tiny-granite \
        --set teacher.reasoning=none --output benchmarks/results/generation-tiny.json

(`benchmarks/run_all.py` gives both their recorded settings.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _generate(config, languages, root: str) -> tuple[float, dict]:
    from kakugo.generate.pipeline import generate
    from kakugo.storage import Storage

    started = time.monotonic()
    manifests = generate(config, languages, Storage(root))
    return time.monotonic() - started, manifests


DIRECT = r"""
import json, sys, time
import pyarrow.dataset as pads
from vllm import LLM, SamplingParams
args = json.loads(sys.argv[1])
import os
def busy():  # CPU seconds the whole machine has been busy (/proc/stat)
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
rows = pads.dataset(args["folder"], format="parquet", partitioning="hive").to_table(
    columns=args["columns"]).to_pylist()
started = time.monotonic()
llm = LLM(model=args["model"], **args["engine_kwargs"])
ready, busy_ready = time.monotonic(), busy()
params = [SamplingParams(**{**args["sampling"], "max_tokens": r.get("max_tokens") or
                           args["sampling"]["max_tokens"]}) for r in rows]
out = llm.chat([[{"role": "system", "content": r["system"]}, {"role": "user", "content": r["user"]}]
                for r in rows], params, use_tqdm=False)
done, busy_done = time.monotonic(), busy()
tokens = sum(len(o.outputs[0].token_ids) for o in out)
print("RESULT " + json.dumps({"rows": len(rows), "completion_tokens": tokens,
      "startup_seconds": ready - started, "generate_seconds": done - ready,
      "wall_seconds": done - started,
      "machine_cpu_ms_per_request": round(1000 * (busy_done - busy_ready) / len(rows), 2)}))
"""


def direct_args(config, folder: str, columns: tuple[str, ...]) -> dict:
    """The direct engine's arguments: the teacher deployment's engine settings and
    sampling, for the requests in `folder`. What vLLM would choose differently for `LLM`
    than for the server that Ray Serve LLM runs is set to the server's: the executor
    (VLLMEngineConfig gives "mp" on CPU, whatever is asked; there vLLM's mp executor binds
    the engine's worker to one core of two here, the other left to the rest) and the
    per-step token budget (`LLM`'s default is twice the server's). The requests carry no
    seed of their own, as the pipeline's do not (the engine's seed is the deployment's)."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    from kakugo.models import ModelSource
    from kakugo.teacher import engine_kwargs

    engine = config.teacher.engine
    kwargs = engine_kwargs(engine, seed=config.seed)
    if engine.accelerator == "cpu":
        kwargs["distributed_executor_backend"] = "mp"
    else:
        kwargs.pop("distributed_executor_backend", None)
    if "max_num_batched_tokens" not in kwargs:
        world = engine.tensor_parallel_size * engine.pipeline_parallel_size
        kwargs["max_num_batched_tokens"] = EngineArgs.get_batch_defaults(world)[0][
            UsageContext.OPENAI_API_SERVER]
    s = config.teacher.sampling
    return {"folder": folder, "columns": list(columns),
            "model": ModelSource.parse(config.teacher.model).materialize(),
            "engine_kwargs": kwargs,
            "sampling": {"temperature": s.temperature, "top_p": s.top_p,
                         "max_tokens": s.max_tokens,
                         "repetition_penalty": s.repetition_penalty}}


def _direct(config, folder: str, columns: tuple[str, ...] = ("system", "user")) -> dict:
    from kakugo.teacher import engine_env

    engine = config.teacher.engine
    args = direct_args(config, folder, columns)
    env = {**os.environ, **engine_env(engine)}
    proc = subprocess.run([sys.executable, "-c", DIRECT, json.dumps(args)], env=env,
                          capture_output=True, text=True, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def answer_requests(n: int, max_tokens: int, data_dir: Path) -> list[dict]:
    """n answer requests in Scottish Gaelic's responder prompt: English FLORES-200 sentences
    (cycled), each with the same reply budget."""
    from kakugo.generate.requests import make_request
    from kakugo.prompts import render

    sentences = (data_dir / "flores200" / "devtest" / "eng_Latn.devtest").read_text(
        encoding="utf-8").splitlines()
    system = render("responder_system", language="Scottish Gaelic")
    return [make_request(language="gla_Latn", language_name="Scottish Gaelic",
                         category="benchmark", step="respond", parent_id="steady",
                         position=i, item=text, seed="", specific=False, n=0,
                         user=f"{text}\n\nExplain this in a few sentences.", system=system,
                         max_tokens=max_tokens)
            for i, text in enumerate(sentences[i % len(sentences)] for i in range(n))]


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by every process of this machine, summed by
    what it is (Ray's and vLLM's process titles, else the program's name)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        used = (int(fields[11]) + int(fields[12])) / tick
        name = title.split(" ")[0] if title.startswith(("ray::", "VLLM::")) else \
            Path(title.split(" ")[0]).name or stat[stat.index("(") + 1:stat.rindex(")")]
        label = name.split(".")[0] if name.startswith("ray::") else name
        out[label] = out.get(label, 0.0) + used
    return out


def _steady(config, n: int, max_tokens: int, data_dir: Path, tmp: str) -> dict:
    """One engine pass of n requests against the same requests on vllm.LLM, run before and
    after the pass: this machine's speed drifts by 10-40% within minutes, so the pass is
    compared with the mean of the two and their spread is reported (module doc)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from kakugo.generate.engine_pass import run_pass
    from kakugo.serving import Teacher
    from kakugo.storage import Storage

    rows = answer_requests(n, max_tokens, data_dir)
    columns = ("system", "user", "max_tokens")
    Path(f"{tmp}/requests").mkdir()
    pq.write_table(pa.Table.from_pylist([{c: r[c] for c in columns} for r in rows]),
                   f"{tmp}/requests/requests.parquet")
    before = _direct(config, f"{tmp}/requests", columns)
    storage = Storage(f"{tmp}/steady")
    started = time.monotonic()
    with Teacher(config) as teacher:
        deployed = time.monotonic()
        pass_started, cpu_before, busy_before = time.time(), cpu_seconds(), machine_busy()
        stats = run_pass(ray.data.from_items(rows), config, teacher, storage, "respond",
                         ["gla_Latn"])
        pass_ended, cpu_after, busy_after = time.time(), cpu_seconds(), machine_busy()
    # where the machine's CPU time went during the pass, per request
    cpu_ms = {label: round(1000 * (cpu_after[label] - cpu_before.get(label, 0.0)) / n, 2)
              for label in cpu_after}
    cpu_ms = dict(sorted(((k, v) for k, v in cpu_ms.items() if v >= 0.05),
                         key=lambda item: -item[1]))
    files = sorted(((f.stat().st_mtime, pq.read_table(f, columns=["completion_tokens"])
                     .column(0).to_pylist()) for f in Path(f"{tmp}/steady/respond").rglob(
                         "*.parquet")), key=lambda item: item[0])
    first, last = files[0][0], files[-1][0]
    steady_tokens = sum(sum(tokens) for _, tokens in files[1:])
    pipeline = {
        "requests": sum(len(tokens) for _, tokens in files),
        "completion_tokens": sum(sum(tokens) for _, tokens in files),
        "deploy_seconds": round(deployed - started, 1),
        "pass_seconds": round(pass_ended - pass_started, 1),
        "pass_startup_seconds": round(first - pass_started, 1),
        "files": len(files),
        "steady_seconds": round(last - first, 1),
        "steady_tokens_per_second": round(steady_tokens / max(last - first, 1e-9), 1),
        "failed_requests": stats["failed_requests"],
        "machine_cpu_ms_per_request": round(1000 * (busy_after - busy_before) / n, 2),
        "cpu_ms_per_request": cpu_ms,
    }
    after = _direct(config, f"{tmp}/requests", columns)
    for run in (before, after):
        run["steady_tokens_per_second"] = round(
            run["completion_tokens"] / run["generate_seconds"], 1)
    speeds = [run["steady_tokens_per_second"] for run in (before, after)]
    direct = {"steady_tokens_per_second": round(sum(speeds) / 2, 1),
              "spread": round(abs(speeds[0] - speeds[1]) / min(speeds), 3),
              "before_the_pass": before, "after_the_pass": after}
    engine = config.teacher.engine
    return {
        "requests": n, "max_tokens": max_tokens,
        "engine": {"replicas": engine.replicas, "batch_size": engine.batch_size,
                   "max_num_seqs": engine.max_num_seqs, "cpus_per_engine": engine.cpus_per_engine},
        "pipeline": pipeline, "direct_engine": direct,
        "ratio": round(pipeline["steady_tokens_per_second"]
                       / direct["steady_tokens_per_second"], 3),
    }


BATCH_KEYS = ("date", "config", "overrides", "teacher", "languages", "batch_wall_seconds", "per_language_wall_seconds",
              "per_language_over_batch_ratio", "respond_pass", "direct_engine",
              "pipeline_over_direct_tokens_per_second")


def _batch_parts(config, languages, tmp: str) -> dict:
    """Parts 1 and 2 of the module doc."""
    batch_wall, manifests = _generate(config, languages, f"{tmp}/batch")
    single = {lang.flores_code: _generate(config, [lang], f"{tmp}/{lang.flores_code}")[0]
              for lang in languages}
    respond = manifests["respond"]
    tokens = sum(v["completion_tokens"] for v in respond["languages"].values())
    direct = _direct(config, f"{tmp}/batch/generate/respond")
    pipeline_tps = tokens / respond["wall_seconds"]
    direct_tps = direct["completion_tokens"] / direct["wall_seconds"]
    return {
        "languages": [lang.flores_code for lang in languages],
        "batch_wall_seconds": round(batch_wall, 1),
        "per_language_wall_seconds": {k: round(v, 1) for k, v in single.items()},
        "per_language_over_batch_ratio": round(sum(single.values()) / batch_wall, 3),
        "respond_pass": {"rows": sum(v["rows"] for v in respond["languages"].values()),
                         "completion_tokens": tokens,
                         "wall_seconds": respond["wall_seconds"],
                         "tokens_per_second": round(pipeline_tps, 1)},
        "direct_engine": {**direct, "tokens_per_second": round(direct_tps, 1)},
        "pipeline_over_direct_tokens_per_second": round(pipeline_tps / direct_tps, 3),
    }


def main() -> None:
    import ray

    from kakugo.config import load_config
    from kakugo.languages import eval_data_dir, parse_language_list, resolve_many
    from kakugo.serving import serve_process_env

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/tiny-cpu.yaml")
    parser.add_argument("--languages", default="gd,cy")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--parts", default="batch,steady",
                        help="batch (parts 1 and 2 of the module doc), steady (part 3)")
    parser.add_argument("--steady-requests", type=int, default=2000)
    parser.add_argument("--steady-max-tokens", type=int, default=48)
    parser.add_argument("--output", default=str(RESULTS / "generation.json"))
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    config = load_config(args.config, args.overrides)
    languages = resolve_many(parse_language_list(args.languages),
                             eval_data_dir(config.evaluation.data_dir))
    # Serve's settings as a run gives them to its processes (kakugo.run.connect_ray)
    from kakugo.run import own_auth_token

    own_auth_token()  # the local cluster's token: nothing read from ~/.ray
    ray.init(num_cpus=config.cluster.local_num_cpus, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": serve_process_env(config)})
    result: dict = {}
    setting = {"date": time.strftime("%Y-%m-%d"), "config": args.config,
               "overrides": args.overrides, "teacher": config.teacher.model}
    with tempfile.TemporaryDirectory() as tmp:
        if "batch" in parts:
            result.update(setting, **_batch_parts(config, languages, tmp))
        if "steady" in parts:
            result["steady_state"] = {**setting, **_steady(
                config, args.steady_requests, args.steady_max_tokens,
                eval_data_dir(config.evaluation.data_dir), tmp)}
    ray.shutdown()
    path = Path(args.output)
    if path.exists() and parts != {"batch", "steady"}:  # keep the parts not run this time
        earlier = json.loads(path.read_text())
        kept = {k: v for k, v in earlier.items() if k not in result and k not in (
            BATCH_KEYS if "batch" in parts else ("steady_state",)) + ("machine",)}
        result = {**kept, **result}
    from plots import save_result  # benchmarks/plots.py, next to this script
    save_result("generation", result, path)


if __name__ == "__main__":
    main()
