"""Scaling benchmark: prints JSON and writes benchmarks/results/scaling.json (+ .png).

1. Batches of 1, 2 and 4 languages through one batch run (the generation and dataset
   stages, where the languages share the teacher's engines): wall time, rows per second,
   engine-seconds and engine-seconds per language, to show how cost grows with the batch.
2. The reference flow on the 2-language batch: one engine start per engine step and per
   language, languages one after another (the way a per-language script pipeline runs),
   vs our batch run of the same languages, same engine, same data: wall-time ratio.

Training and evaluation run once per language in both flows, so they are left out: they
add the same time per language to either side.

    python benchmarks/scaling.py --config configs/tiny-cpu.yaml --languages gd,cy,yo,mt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OVERRIDES = ["teacher.model=embedded:tiny-granite", "teacher.reasoning=none",
                     "teacher.sampling.list_item_max_chars=60", "filters.basic=annotate",
                     "filters.min_rows_per_language=1"]


def batch_run(config, languages, root: str) -> dict:
    """Our flow: one run of the generation and dataset stages for the whole batch."""
    from kakugo.dataset.stage import build_datasets
    from kakugo.generate.pipeline import generate
    from kakugo.storage import Storage

    storage = Storage(root)
    started = time.monotonic()
    manifests = generate(config, languages, storage)
    datasets = build_datasets(config, languages, storage)
    wall = time.monotonic() - started
    return summarize(wall, manifests, datasets, languages)


def reference_run(config, languages, root: str) -> dict:
    """The reference flow: per language, the steps one after another, each engine step
    with its own engine start (deploy, run the pass, tear down)."""
    from kakugo.dataset.stage import build_datasets
    from kakugo.generate.pipeline import GenerationStage
    from kakugo.serving import Teacher
    from kakugo.storage import Storage

    class OneEnginePerStep(GenerationStage):
        def run(self):
            out = {}
            for step in self.steps:
                build = getattr(self, f"build_{step}")
                if step in self.engine_steps:
                    with Teacher(self.config) as self._teacher:
                        out[step] = self._step(step, build)
                else:
                    out[step] = self._step(step, build)
            return out

    started = time.monotonic()
    per_language = {}
    for lang in languages:
        storage = Storage(f"{root}/{lang.flores_code}")
        lang_started = time.monotonic()
        manifests = OneEnginePerStep(config, [lang], storage).run()
        datasets = build_datasets(config, [lang], storage)
        per_language[lang.flores_code] = summarize(time.monotonic() - lang_started,
                                                   manifests, datasets, [lang])
    wall = time.monotonic() - started
    return {"wall_seconds": round(wall, 1),
            "engine_starts": len(languages) * len(GenerationStage.engine_steps),
            "generated_rows": sum(v["generated_rows"] for v in per_language.values()),
            "dataset_rows": sum(v["dataset_rows"] for v in per_language.values()),
            "per_language": per_language}


def summarize(wall: float, manifests: dict, datasets: dict, languages) -> dict:
    from kakugo.generate.pipeline import GenerationStage

    engine = {c.flores_code: 0.0 for c in languages}
    rows = 0
    for step in GenerationStage.engine_steps:
        for code, entry in manifests[step].get("languages", {}).items():
            engine[code] += entry.get("engine_seconds", 0.0)
            rows += entry["rows"]
    kept = {code: entry["rows"] for code, entry in
            datasets["dataset"].get("languages", {}).items()}
    return {"languages": len(languages), "wall_seconds": round(wall, 1),
            "generated_rows": rows, "dataset_rows": sum(kept.values()),
            "rows_per_second": round(rows / wall, 3),
            "engine_seconds": round(sum(engine.values()), 1),
            "engine_seconds_per_language": round(sum(engine.values()) / len(languages), 1),
            "wall_seconds_per_language": round(wall / len(languages), 1)}


def main() -> None:
    import ray

    from kakugo.config import load_config
    from kakugo.languages import eval_data_dir, parse_language_list, resolve_many

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny-cpu.yaml")
    parser.add_argument("--languages", default="gd,cy,yo,mt", help="4 languages")
    parser.add_argument("--sizes", default="1,2,4")
    parser.add_argument("--reference-languages", type=int, default=2,
                        help="batch size of the reference-flow comparison (0: skip it)")
    parser.add_argument("--set", dest="overrides", action="append", default=None)
    args = parser.parse_args()
    overrides = DEFAULT_OVERRIDES if args.overrides is None else args.overrides
    config = load_config(args.config, overrides)
    languages = resolve_many(parse_language_list(args.languages),
                             eval_data_dir(config.evaluation.data_dir))
    sizes = [int(n) for n in args.sizes.split(",")]
    ray.init(num_cpus=config.cluster.local_num_cpus, include_dashboard=False,
             log_to_driver=False)
    result: dict = {
        "benchmark": "scaling",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "config": args.config, "overrides": overrides, "teacher": config.teacher.model,
        "languages": [lang.flores_code for lang in languages],
        "stages": ["generate", "dataset"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        batches = {}
        for n in sizes:
            batches[n] = batch_run(config, languages[:n], f"{tmp}/batch-{n}")
            print(json.dumps({f"batch of {n}": batches[n]}), flush=True)
        result["batches"] = [batches[n] for n in sizes]
        n = args.reference_languages
        if n:
            ours = batches.get(n) or batch_run(config, languages[:n], f"{tmp}/batch-{n}")
            reference = reference_run(config, languages[:n], f"{tmp}/reference")
            result["reference_flow"] = {
                "languages": [lang.flores_code for lang in languages[:n]],
                "ours": ours, "reference": reference,
                "reference_over_ours_wall_time": round(
                    reference["wall_seconds"] / ours["wall_seconds"], 3)}
    ray.shutdown()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    from plots import plot  # benchmarks/plots.py, next to this script

    plot(RESULTS / "scaling.json")


if __name__ == "__main__":
    main()
