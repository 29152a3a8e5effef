"""How a stage reads a step's rows for its languages: `Stage.read` (an expression on the
`language` partition column) against the same read with a row function, side by side.

A step folder shaped like the paper-scale run's response step (configs/paper.yaml's 54
languages, about 2,080 rows each at 0.5% of the paper's counts, a 1,500-character text per
row) is written once; then both reads run in turn, 3 times each, for the whole batch and
for one language of the 54 (a batch that shares its output root with others). Each read
is materialized in the object store; the figure is the median wall time.

    python benchmarks/step_reads.py
    python benchmarks/step_reads.py --rows 2080 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time


def write_step(storage, folder: str, codes: list[str], rows: int, text_chars: int) -> None:
    """Two parquet files per language, as an engine pass of two blocks writes them."""
    import pyarrow as pa

    for code in codes:
        table = pa.table({"id": [f"{code}-{i}" for i in range(rows)],
                          "category": ["topic"] * rows,
                          "revise": [i % 2 == 0 for i in range(rows)],
                          "text": ["x" * text_chars] * rows})
        half = rows // 2
        for part, piece in enumerate((table.slice(0, half), table.slice(half))):
            storage.write_parquet(f"{folder}/language={code}/part-{part}.parquet", piece)


def seconds(build) -> float:
    started = time.perf_counter()
    build().materialize()
    return time.perf_counter() - started


def main() -> None:
    import ray

    from kakugo.config import load_config
    from kakugo.languages import eval_data_dir, paper54
    from kakugo.steps import Stage
    from kakugo.storage import Storage

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2080, help="rows per language")
    parser.add_argument("--text-chars", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    class Step(Stage):
        root = "bench"
        steps = ("rows",)
        config_sections = ("seed",)

    config = load_config(None, [])
    languages = paper54(eval_data_dir(config.evaluation.data_dir))
    codes = [lang.flores_code for lang in languages]
    from kakugo.run import own_auth_token

    own_auth_token()  # the local cluster's token: nothing read from ~/.ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        storage = Storage(tmp)
        folder = Step(config, languages, storage).folder("rows")
        write_step(storage, folder, codes, args.rows, args.text_chars)
        for name, batch in ((f"{len(languages)} of {len(languages)} languages", languages),
                            (f"1 of {len(languages)} languages", languages[7:8])):
            stage = Step(config, batch, storage)
            wanted = set(stage.codes)
            reads = {
                "expression (Stage.read)": lambda stage=stage: stage.read("rows"),
                "row function": lambda wanted=wanted: storage.ray_dataset(folder).filter(
                    lambda row: row["language"] in wanted),
            }
            rows = {label: build().count() for label, build in reads.items()}
            if len(set(rows.values())) != 1 or rows["row function"] != args.rows * len(batch):
                raise SystemExit(f"{name}: the reads disagree on the rows: {rows}")
            times: dict[str, list[float]] = {label: [] for label in reads}
            for _ in range(args.repeats):
                for label, build in reads.items():
                    times[label].append(seconds(build))
            median = {label: round(statistics.median(t), 3) for label, t in times.items()}
            cases[name] = {"rows": rows["row function"], "median_seconds": median,
                           "row_function_over_expression": round(
                               median["row function"] / median["expression (Stage.read)"], 2)}
            print(json.dumps({name: cases[name]}), flush=True)
    ray.shutdown()
    result = {"rows_per_language": args.rows,
              "text_chars": args.text_chars, "repeats": args.repeats, "cases": cases}
    from plots import save_result  # benchmarks/plots.py, next to this script
    save_result("step_reads", result)


if __name__ == "__main__":
    main()
