"""Every benchmark, one after another, then a PNG per result (benchmarks/plots.py).

    python benchmarks/run_all.py              # the CPU benchmarks (and the GPU one on a GPU)
    python benchmarks/run_all.py --only scaling,serving

Each benchmark is its own script that prints JSON and writes benchmarks/results/NAME.json;
they run in separate processes (each starts and stops its own local Ray). The summary
printed at the end is JSON too: per benchmark its exit code, wall time and result file.
Only one benchmark runs at a time: on a small machine they would measure each other.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TINY_TEACHER = ["--set", "teacher.model=embedded:tiny-granite", "--set", "teacher.reasoning=none",
                "--set", "teacher.sampling.list_item_max_chars=60"]
STEADY_ENGINE = ["--set", "teacher.engine.batch_size=32", "--set", "teacher.engine.max_num_seqs=32"]
# name: (script, its arguments: the settings the recorded results were measured with),
# in order: the stage benchmarks, then the paper-scale and scaling runs (the longest)
CPU = {
    "language_id": ("language_id", []),
    "eval_fidelity": ("eval_fidelity", []),
    # the steady-state goal on the config's teacher, SmolLM2-135M-Instruct (a real model)
    "generation": ("generation", [
        "--parts", "steady", "--steady-max-tokens", "32", "--set", "teacher.reasoning=none",
        *STEADY_ENGINE]),
    # the same on the tiny random model (a few ms per engine step: the pipeline's own cost
    # laid bare), with the batch vs per-language and start-up parts
    "generation-tiny": ("generation", [
        *TINY_TEACHER, *STEADY_ENGINE, "--output", str(HERE / "results" / "generation-tiny.json")]),
    "training": ("training", ["--workers", "1,2"]),
    "zero3_overhead": ("zero3_overhead", []),
    "step_reads": ("step_reads", []),
    "serving": ("serving", ["--concurrency", "1,16,64", "--duration", "45"]),
    "scaling-paper": ("scaling", ["--paper-scale", "--paper-sizes", "1,8,54",
                                  "--fraction", "0.005"]),
    "scaling": ("scaling", []),
}
GPU = {"gpu_train": ("gpu_train", [])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated benchmark names")
    args = parser.parse_args()
    import torch

    known = {**CPU, **GPU}
    names = list(CPU) + (list(GPU) if torch.cuda.is_available() else [])
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(known)}")
        names = [n for n in names if n in wanted]
    summary = {}
    for name in names:
        started = time.monotonic()
        script, script_args = known[name]
        code = subprocess.run([sys.executable, str(HERE / f"{script}.py"), *script_args],
                              cwd=HERE.parent, check=False).returncode
        result = HERE / "results" / f"{name}.json"
        summary[name] = {"exit_code": code, "wall_seconds": round(time.monotonic() - started, 1),
                         "result": str(result.relative_to(HERE.parent)) if result.exists()
                         else None}
    subprocess.run([sys.executable, str(HERE / "plots.py")], cwd=HERE.parent, check=False)
    print(json.dumps({"benchmarks": summary}, indent=2))
    return max((s["exit_code"] for s in summary.values()), default=0)


if __name__ == "__main__":
    raise SystemExit(main())
