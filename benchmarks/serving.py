"""Serving benchmark: prints JSON and writes benchmarks/results/serving.json.

The same closed-loop load (C concurrent clients, each sending chat requests back to back,
for D seconds, at each C of --concurrency) against
  (a) our Ray Serve app (`kakugo serve`: Ray's OpenAI ingress + KakugoIngress + vLLM), and
  (b) vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`),
one after the other on the same model and engine settings (max_num_seqs: the largest C).
Each level runs for D seconds and until --min-requests are done. Reports per C
requests/s, output tokens/s, p50/p99 latency, errors, the CPU cores each kind of process
used meanwhile, and (a)/(b): the requests/s ratio and the p99 ratio. The app's Ray starts
with the Serve settings a run gives its processes (kakugo.serving.serve_process_env).

    python benchmarks/serving.py --config configs/tiny-cpu.yaml --concurrency 1,16,64 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


async def closed_loop(url: str, model: str, concurrency: int, duration: float,
                      max_tokens: int, headers: dict[str, str] | None = None,
                      flooders: int = 0, min_requests: int = 0) -> dict:
    """C clients, each sending its next request when the last one answered, for `duration`
    and until `min_requests` are done (at one client a request more or less is a few % of
    the rate); with `flooders`, as many more clients send oversize and malformed bodies
    meanwhile."""
    import httpx

    latencies: list[float] = []
    tokens = errors = 0
    first_errors: list[str] = []
    deadline = time.monotonic() + duration

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens, errors
        n = 0
        while time.monotonic() < deadline or len(latencies) + errors < min_requests:
            body = {"model": model, "max_tokens": max_tokens, "temperature": 0.7,
                    "messages": [{"role": "user", "content": f"Client {index}, question {n}: "
                                  "tell me about the sea."}]}
            started = time.monotonic()
            try:
                r = await http.post(url + "/chat/completions", json=body)
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]
                latencies.append(time.monotonic() - started)
            except (httpx.HTTPError, KeyError, ValueError) as exc:  # counted, load goes on
                errors += 1
                if len(first_errors) < 3:
                    first_errors.append(repr(exc)[:300])
            n += 1

    refused: dict[str, int] = {}
    bad_bodies = [b"x" * 2_000_000, b"{not json", b"[1, 2]",
                  json.dumps({"model": model, "messages": "hi"}).encode()]

    async def flooder(index: int, http: httpx.AsyncClient) -> None:
        n = index
        while time.monotonic() < deadline:
            try:
                r = await http.post(url + "/chat/completions",
                                    content=bad_bodies[n % len(bad_bodies)],
                                    headers={"content-type": "application/json"})
                refused[str(r.status_code)] = refused.get(str(r.status_code), 0) + 1
            except httpx.HTTPError as exc:
                refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1
            n += 1

    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency + flooders)
    async with httpx.AsyncClient(timeout=300, limits=limits, headers=headers or {}) as http:
        await asyncio.gather(*(client(i, http) for i in range(concurrency)),
                             *(flooder(i, http) for i in range(flooders)))
    wall = time.monotonic() - started
    latencies.sort()

    def pct(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 3) \
            if latencies else None

    return {"requests": len(latencies), "errors": errors, "first_errors": first_errors,
            **({"flood_answers": refused} if flooders else {}),
            "wall_seconds": round(wall, 1),
            "requests_per_second": round(len(latencies) / wall, 2),
            "output_tokens_per_second": round(tokens / wall, 1),
            "latency_p50_s": pct(0.5), "latency_p99_s": pct(0.99)}


def under_load(url: str, model: str, args, startup_seconds: float,
               key: str | None = None) -> dict:
    """Each level's load, and the CPU cores each kind of process used meanwhile (on a small
    machine whatever runs beside the engine takes its time)."""
    from generation import cpu_seconds  # benchmarks/generation.py, next to this script

    headers = {"authorization": f"Bearer {key}"} if key else None
    asyncio.run(closed_loop(url, model, 2, 5, args.max_tokens, headers))  # warm-up
    out: dict = {"startup_seconds": round(startup_seconds, 1), "api_key": bool(key),
                 "levels": {}}
    for level in args.levels:
        before, started = cpu_seconds(), time.monotonic()
        result = asyncio.run(closed_loop(url, model, level, args.duration, args.max_tokens,
                                         headers, min_requests=args.min_requests))
        after, wall = cpu_seconds(), time.monotonic() - started
        cores = {name: round((used - before.get(name, 0.0)) / wall, 3)
                 for name, used in after.items()}
        result["cpu_cores_by_process"] = dict(sorted(
            ((name, c) for name, c in cores.items() if c >= 0.005), key=lambda kv: -kv[1]))
        out["levels"][str(level)] = result
    if args.flood:  # good clients beside as many sending oversize and malformed bodies
        out["under_flood"] = asyncio.run(closed_loop(
            url, model, args.flood, args.duration / 2, args.max_tokens, headers,
            flooders=args.flood))
    return out


def bench_serve(config, model, args) -> dict:
    import ray
    from ray import serve

    from kakugo.serving import serve_process_env, start

    key = None
    if args.api_key:  # as a server on a network is run: the key on every request
        key = os.urandom(16).hex()
        os.environ["KAKUGO_BENCH_API_KEY"] = key
        config = config.model_copy(update={"serving": config.serving.model_copy(
            update={"api_key_env": "KAKUGO_BENCH_API_KEY"})})
    # Serve's settings as a run gives them to its processes (kakugo.run.connect_ray)
    from kakugo.run import own_auth_token

    own_auth_token()  # the local cluster's token: nothing read from ~/.ray
    ray.init(num_cpus=config.cluster.local_num_cpus, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": serve_process_env(config)})
    try:
        started = time.monotonic()
        url = start(config, [model])
        return under_load(url, model.name, args, time.monotonic() - started, key)
    finally:
        serve.shutdown()
        ray.shutdown()


def bench_vllm(config, model, args) -> dict:
    from kakugo.models import ModelSource
    from kakugo.serving import answering
    from kakugo.teacher import engine_env, engine_kwargs

    kwargs = engine_kwargs(model.engine)
    port = config.serving.port + 1
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", ModelSource.parse(model.source).materialize(),
           "--served-model-name", model.name, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", kwargs["dtype"], "--max-model-len", str(kwargs["max_model_len"]),
           "--max-num-seqs", str(kwargs["max_num_seqs"])]
    if model.engine.accelerator == "cpu":
        # the executor Ray Serve LLM gives the app's engine on CPU ("mp", whatever is
        # asked; it binds the engine's threads to its cores), so both run the same engine
        cmd += ["--distributed-executor-backend", "mp"]
    if kwargs["enforce_eager"]:
        cmd.append("--enforce-eager")
    env = {**os.environ, **engine_env(model.engine)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        started = time.monotonic()
        if not answering(url, timeout=600):
            raise TimeoutError(f"vLLM's server at {url} not ready after 600 s")
        return under_load(url, model.name, args, time.monotonic() - started)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    from kakugo.config import load_config
    from kakugo.serving import ServedModel

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/tiny-cpu.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--model", default=None,
                        help="model spec to serve (default: the config's student)")
    parser.add_argument("--concurrency", default="1,16,64",
                        help="comma-separated numbers of concurrent clients")
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--min-requests", type=int, default=40,
                        help="each level runs on until this many requests are done")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--only", choices=["serve", "vllm"], default=None)
    parser.add_argument("--no-api-key", dest="api_key", action="store_false",
                        help="serve without an API key (default: a key on every request)")
    parser.add_argument("--flood", type=int, default=0, metavar="N",
                        help="then N good clients beside N sending oversize and malformed "
                        "bodies, for half the duration")
    parser.add_argument("--output", default=str(RESULTS / "serving.json"))
    args = parser.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    config = load_config(args.config, args.overrides)
    engine = config.serving.engine.model_copy(update={"max_num_seqs": max(args.levels)})
    model = ServedModel(config.student.name, args.model or config.student.model, "student",
                        engine, config.serving.students)
    out: dict = {"model": model.source, "concurrency": args.levels,
                 "duration_s": args.duration, "max_tokens": args.max_tokens}
    if args.only in (None, "serve"):
        out["ray_serve"] = bench_serve(config, model, args)
    if args.only in (None, "vllm"):
        out["vllm_openai_server"] = bench_vllm(config, model, args)
    if "ray_serve" in out and "vllm_openai_server" in out:
        ratios = {}
        for level in map(str, args.levels):
            a = out["ray_serve"]["levels"][level]
            b = out["vllm_openai_server"]["levels"][level]
            ratios[level] = {
                "requests_per_second": round(a["requests_per_second"]
                                             / b["requests_per_second"], 3)
                if b["requests_per_second"] else None,
                "p99_latency": round(a["latency_p99_s"] / b["latency_p99_s"], 3)
                if a["latency_p99_s"] and b["latency_p99_s"] else None}
        out["serve_over_vllm"] = ratios
    from plots import save_result  # benchmarks/plots.py, next to this script
    save_result("serving", out, args.output)


if __name__ == "__main__":
    main()
