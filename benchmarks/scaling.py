"""Scaling benchmark: prints JSON and writes benchmarks/results/scaling.json (+ .png).

1. Batches of 1, 2 and 4 languages through one batch run (the generation and dataset
   stages, where the languages share the teacher's engines): wall time, rows per second,
   engine-seconds and engine-seconds per language, to show how cost grows with the batch.
2. The reference flow on the 2-language batch: one engine start per engine step and per
   language, languages one after another (the way a per-language script pipeline runs),
   vs our batch run of the same languages, same engine, same data: wall-time ratio.

Training and evaluation run once per language in both flows, so they are left out: they
add the same time per language to either side.

3. `--paper-scale` (writes scaling-paper.json): the generation and dataset stages of
   configs/paper.yaml for 1, 8 and 54 of the paper's languages, every engine pass
   answered at once by a stand-in teacher (benchmarks/standin_teacher.py), so that all the
   time is orchestration: Ray Data, the Serve handle, pre/post-processing, parquet, the
   dataset checks. Each size runs in a process of its own (its peak memory is the
   driver's). The paper's per-language counts (10,000 context texts, 15,000 translations,
   20 macro-topics per seed, 30 detailed scenarios per broad one) are scaled by
   `--fraction`; context texts and English conversations are synthetic files.
   Per request: orchestration seconds, against the teacher's own seconds per request at
   the assumed cost stated in the result.

    python benchmarks/scaling.py --config configs/tiny-cpu.yaml --languages gd,cy,yo,mt
    python benchmarks/scaling.py --paper-scale --fraction 0.02
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


# the teacher's cost per request assumed for the paper's batch (the README's sizing):
# about 1,500 output tokens per request (reasoning included) at 2,500 output tokens/s for
# one gpt-oss-120b engine on one H100 at 256 sequences
ASSUMED_TOKENS_PER_REQUEST = 1500
ASSUMED_ENGINE_TOKENS_PER_SECOND = 2500


def paper_overrides(root: str, fraction: float) -> list[str]:
    """configs/paper.yaml with the stand-in's needs: local synthetic sources, tokenizers
    and a LID model that need no hub (embedded ones), one stand-in replica, and no
    decontamination (one of its sets, Belebele, is read from the hub)."""
    def scaled(n: int) -> int:
        return max(1, round(n * fraction))

    return [f"output={root}/out", "teacher.model=embedded:tiny-granite",
            "student.model=embedded:tiny-granite", "teacher.engine.accelerator=cpu",
            "teacher.engine.replicas=1", "cluster.teacher_accelerator_type=null",
            "cluster.training_accelerator_type=null", "progress_every_s=60",
            f"generation.contexts.source={root}/contexts/{{flores_code}}.parquet",
            f"generation.contexts.max_texts={scaled(10000)}",
            f"generation.topics.macro_topics_per_seed={scaled(20)}",
            f"generation.scenarios.detailed_per_broad={scaled(30)}",
            f"translation.source={root}/english.jsonl", "translation.subset=null",
            f"translation.rows={scaled(15000)}", "filters.min_rows_per_language=1",
            # offline: the bundled LID model; Belebele (decontamination) is on the hub only
            "filters.language_id_model=embedded:lid176", "filters.decontamination=\"off\""]


def write_sources(root: str, languages, texts: int, conversations: int) -> None:
    """Synthetic inputs: `texts` context texts per language, `conversations` English ones."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    Path(f"{root}/contexts").mkdir(parents=True, exist_ok=True)
    words = ["tha", "an", "latha", "brèagha", "an-diugh", "agus", "a'", "ghrian", "a'", "deàrrsadh", "air", "a'", "bhaile"]
    for lang in languages:
        rows = [" ".join(words[(i + k) % len(words)] for k in range(40 + i % 60)) + f" {i}."
                for i in range(texts)]
        pq.write_table(pa.table({"text": rows}), f"{root}/contexts/{lang.flores_code}.parquet")
    with open(f"{root}/english.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"messages": [
                {"role": "user", "content": f"Write two sentences about the number {i}."},
                {"role": "assistant", "content": f"The number {i} is a number. It follows "
                                                 f"{i - 1}."}]}) + "\n" for i in range(conversations))


def folder_sizes(root: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            stage = path.relative_to(root).parts[0]
            entry = out.setdefault(stage, {"files": 0, "bytes": 0})
            entry["files"] += 1
            entry["bytes"] += path.stat().st_size
    return out


def spilled_bytes() -> int:
    from ray._private.internal_api import memory_summary

    for line in memory_summary(stats_only=True).splitlines():
        if line.startswith("Spilled"):  # "Spilled 123 MiB, 4 objects, ..."
            return int(float(line.split()[1]) * 2**20)
    return 0


def paper_scale_one(n: int, fraction: float, root: str, num_cpus: int | None) -> dict:
    """One size, in this process: the generation and dataset stages with the stand-in."""
    import ray
    from standin_teacher import StandinTeacherApp

    from kakugo import layout
    from kakugo.config import load_config
    from kakugo.dataset.stage import build_datasets
    from kakugo.generate.pipeline import GenerationStage
    from kakugo.languages import eval_data_dir, paper54
    from kakugo.storage import Storage

    class StandinStage(GenerationStage):
        def make_teacher(self):
            return StandinTeacherApp(self.config)

    config = load_config("configs/paper.yaml", paper_overrides(root, fraction))
    languages = paper54(eval_data_dir(config.evaluation.data_dir))[:n]
    write_sources(root, languages, config.generation.contexts.max_texts,
                  config.translation.rows)
    from kakugo.run import own_auth_token

    own_auth_token()  # the local cluster's token: nothing read from ~/.ray
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    storage = Storage(config.output)
    started = time.monotonic()
    stage = StandinStage(config, languages, storage)
    failed = stage.read_inputs()
    manifests = stage.run()
    generated = time.monotonic()
    datasets = build_datasets(config, languages, storage)
    ended = time.monotonic()
    peak_before_resume = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the batch resumed where reading what was written costs most: every engine pass cut
    # after its last row and before its manifest, so each reads all of its ids again
    for step in GenerationStage.engine_steps:
        storage.delete(layout.manifest(stage.folder(step)))
    resumed_at = time.monotonic()
    resumed = StandinStage(config, stage.languages, storage).run()
    resume_seconds = time.monotonic() - resumed_at
    spilled = spilled_bytes()
    ray.shutdown()
    requests = sum(entry["rows"] for step in GenerationStage.engine_steps
                   for entry in manifests[step]["languages"].values())
    kept = sum(entry["rows"] for entry in datasets["sft"]["languages"].values())
    sizes = folder_sizes(Path(config.output))
    return {
        "languages": n, "failed_languages": sorted(failed),
        "teacher_requests": requests,
        "teacher_requests_per_language": round(requests / n),
        "dataset_rows": kept,
        "generate_seconds": round(generated - started, 1),
        "dataset_seconds": round(ended - generated, 1),
        "orchestration_ms_per_request": round(1000 * (ended - started) / requests, 3),
        "steps_seconds": {step: manifests[step].get("wall_seconds")
                          for step in GenerationStage.steps},
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "object_store_spilled_bytes": spilled,
        "resume": {
            "seconds": round(resume_seconds, 1),
            "ms_per_request": round(1000 * resume_seconds / requests, 3),
            "rows_found_written": sum(resumed[step]["skipped_existing"]
                                      for step in GenerationStage.engine_steps),
            "rows_sent": sum(resumed[step]["sent"] for step in GenerationStage.engine_steps),
            "driver_peak_rss_mib_before": round(peak_before_resume)},
        "files": sum(v["files"] for v in sizes.values()),
        "bytes": sum(v["bytes"] for v in sizes.values()),
        "by_stage": sizes,
    }


def paper_scale(sizes: list[int], fraction: float, num_cpus: int | None) -> dict:
    runs = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [sys.executable, __file__, "--paper-scale-one", str(n), "--fraction",
                 str(fraction), "--root", tmp, *(["--num-cpus", str(num_cpus)]
                                                  if num_cpus else [])],
                stdout=subprocess.PIPE, text=True, check=False)  # its log: our stderr
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                raise SystemExit(f"paper scale, {n} languages: exit {proc.returncode}")
            runs.append(json.loads(lines[-1].removeprefix("RESULT ")))
            print(json.dumps(runs[-1]), flush=True)
    teacher_s = ASSUMED_TOKENS_PER_REQUEST / ASSUMED_ENGINE_TOKENS_PER_SECOND
    largest = runs[-1]
    growth = {key: [round(r[key] / runs[0][key], 2) if runs[0][key] else None for r in runs]
              for key in ("teacher_requests", "orchestration_ms_per_request",
                          "driver_peak_rss_mib", "files", "bytes")}
    return {
        "config": "configs/paper.yaml", "teacher": "benchmark stand-in (instant replies)",
        "fraction_of_paper_counts": fraction,
        "languages": largest["languages"],
        "runs": runs,
        "growth_over_first": growth,
        "assumed_teacher": {
            "tokens_per_request": ASSUMED_TOKENS_PER_REQUEST,
            "engine_tokens_per_second": ASSUMED_ENGINE_TOKENS_PER_SECOND,
            "engine_seconds_per_request": teacher_s},
        "orchestration_share_of_teacher_time": round(
            largest["orchestration_ms_per_request"] / 1000 / teacher_s, 4),
    }


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
    parser.add_argument("--paper-scale", action="store_true",
                        help="part 3 of the module doc instead of parts 1 and 2")
    parser.add_argument("--paper-sizes", default="1,8,54")
    parser.add_argument("--fraction", type=float, default=0.02,
                        help="share of the paper's per-language counts (--paper-scale)")
    parser.add_argument("--num-cpus", type=int, default=8,
                        help="logical CPUs of the local Ray (--paper-scale)")
    parser.add_argument("--paper-scale-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paper_scale_one:
        print("RESULT " + json.dumps(paper_scale_one(args.paper_scale_one, args.fraction,
                                                     args.root, args.num_cpus)))
        return
    if args.paper_scale:
        result = paper_scale([int(n) for n in args.paper_sizes.split(",")], args.fraction,
                             args.num_cpus)
        from plots import save_result  # benchmarks/plots.py, next to this script
        save_result("scaling-paper", result)
        return
    overrides = DEFAULT_OVERRIDES if args.overrides is None else args.overrides
    config = load_config(args.config, overrides)
    languages = resolve_many(parse_language_list(args.languages),
                             eval_data_dir(config.evaluation.data_dir))
    sizes = [int(n) for n in args.sizes.split(",")]
    from kakugo.run import own_auth_token

    own_auth_token()  # the local cluster's token: nothing read from ~/.ray
    ray.init(num_cpus=config.cluster.local_num_cpus, include_dashboard=False,
             log_to_driver=False)
    result: dict = {
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
    from plots import save_result  # benchmarks/plots.py, next to this script
    save_result("scaling", result)


if __name__ == "__main__":
    main()
