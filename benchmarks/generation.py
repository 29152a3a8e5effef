"""Generation benchmark: prints JSON and writes benchmarks/results/generation.json.

1. batch vs per-language: the generation stage for N languages in one pipeline (engines
   shared by all languages) vs one pipeline per language, same config: wall-time ratio.
2. pipeline vs direct engine: output tokens/s of the pipeline's `respond` pass vs the same
   requests sent straight to one in-process vLLM engine (`vllm.LLM.chat`), both counting
   engine start-up: ratio.

    python benchmarks/generation.py --config configs/tiny-cpu.yaml --languages gd,cy
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
rows = pads.dataset(args["folder"], format="parquet", partitioning="hive").to_table(
    columns=["system", "user"]).to_pylist()
started = time.monotonic()
llm = LLM(model=args["model"], **args["engine_kwargs"])
ready = time.monotonic()
params = SamplingParams(**args["sampling"])
out = llm.chat([[{"role": "system", "content": r["system"]}, {"role": "user", "content": r["user"]}]
                for r in rows], params, use_tqdm=False)
done = time.monotonic()
tokens = sum(len(o.outputs[0].token_ids) for o in out)
print("RESULT " + json.dumps({"rows": len(rows), "completion_tokens": tokens,
      "startup_seconds": ready - started, "generate_seconds": done - ready,
      "wall_seconds": done - started}))
"""


def _direct(config, folder: str) -> dict:
    from kakugo.models import ModelSource
    from kakugo.teacher import engine_env, engine_kwargs

    engine = config.teacher.engine
    kwargs = engine_kwargs(engine, seed=config.seed)
    kwargs.pop("distributed_executor_backend", None)
    s = config.teacher.sampling
    args = {"folder": folder, "model": ModelSource.parse(config.teacher.model).materialize(),
            "engine_kwargs": kwargs,
            "sampling": {"temperature": s.temperature, "top_p": s.top_p,
                         "max_tokens": s.max_tokens, "seed": config.seed}}
    env = {**os.environ, **engine_env(engine)}
    proc = subprocess.run([sys.executable, "-c", DIRECT, json.dumps(args)], env=env,
                          capture_output=True, text=True, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    import ray

    from kakugo.config import load_config
    from kakugo.languages import eval_data_dir, parse_language_list, resolve_many

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/tiny-cpu.yaml")
    parser.add_argument("--languages", default="gd,cy")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    languages = resolve_many(parse_language_list(args.languages),
                             eval_data_dir(config.evaluation.data_dir))
    ray.init(num_cpus=config.cluster.local_num_cpus, include_dashboard=False,
             log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        batch_wall, manifests = _generate(config, languages, f"{tmp}/batch")
        single = {lang.flores_code: _generate(config, [lang], f"{tmp}/{lang.flores_code}")[0]
                  for lang in languages}
        respond = manifests["respond"]
        tokens = sum(v["completion_tokens"] for v in respond["languages"].values())
        direct = _direct(config, f"{tmp}/batch/generate/respond")
    ray.shutdown()
    pipeline_tps = tokens / respond["wall_seconds"]
    direct_tps = direct["completion_tokens"] / direct["wall_seconds"]
    result = {
        "benchmark": "generation",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "config": args.config,
        "overrides": args.overrides,
        "teacher": config.teacher.model,
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
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "generation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
