"""Training benchmark: prints JSON and writes benchmarks/results/training.json.

Tokens/s of our Ray Train + DeepSpeed ZeRO-3 loop vs a bare single-process loop (plain
PyTorch AdamW, same model, same packed rows, same micro-batch), and the packing
efficiency of the data. On CPU this measures framework overhead on the tiny student;
benchmarks/gpu_train.py is the GPU counterpart on a Granite-4.0-Micro-sized model.

Ours runs on each number of workers of --workers (the same rows, data parallel). The
bare loop runs before and after each of ours (on the first --bare-rows packed rows) and
each ratio is against the mean of the two next to it: on a small shared machine the same
loop's tokens/s drifts by 10% and more from one minute to the next.

    KAKUGO_DATA_DIR=../shared/data python benchmarks/training.py [--workers 1,2]
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time

import pyarrow as pa


def synthetic_rows(n: int) -> list[dict]:
    words = ["tha", "an", "latha", "brèagha", "an-diugh", "agus", "tha", "a'", "ghrian", "a'", "deàrrsadh", "air", "a'", "bhaile"]
    rows = []
    for i in range(n):
        answer = " ".join(words[(i + k) % len(words)] for k in range(20 + i % 40))
        rows.append({"id": f"r{i:05d}", "language": "gla_Latn", "category": "topic",
                     "kind": "generated",
                     "messages": [{"role": "user", "content": f"Sgrìobh rudeigin {i}."},
                                  {"role": "assistant", "content": answer}]})
    return rows


def bare_loop(student_path: str, rows: list[dict], config) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kakugo.train.data import collate, model_inputs

    t = config.training
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32,
                                                 attn_implementation=t.attention)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate)
    pad = AutoTokenizer.from_pretrained(student_path).pad_token_id or 0
    tokens, started = 0, None
    for index in range(0, len(rows) - t.micro_batch_size + 1, t.micro_batch_size):
        if index == t.micro_batch_size * 2:  # warm-up steps excluded
            started, tokens = time.monotonic(), 0
        batch = collate(rows[index:index + t.micro_batch_size], pad)
        loss = model(**model_inputs(batch, torch.float32, t.attention)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch["input_ids"].numel()
    return {"tokens_per_second": round(tokens / (time.monotonic() - started), 1)}


def main() -> None:
    import ray

    from kakugo.config import load_config
    from kakugo.languages import resolve
    from kakugo.models import ModelSource
    from kakugo.storage import Storage
    from kakugo.train.trainer import prepare_data, train_language

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--bare-rows", type=int, default=60)
    parser.add_argument("--student", default="embedded:tiny-granite",
                        help="the student (the default: Granite-4.0-Micro-shaped, 15M "
                        "parameters, where framework overhead shows most)")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    from kakugo.run import own_auth_token

    own_auth_token()  # the local cluster's token: nothing read from ~/.ray
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        lang = resolve("gd")
        bare: list[float] = []
        measure_bare = None
        for workers in counts:
            config = load_config("configs/tiny-cpu.yaml", [
                f"output={tmp}/out-{workers}", f"student.model={args.student}",
                f"training.num_workers={workers}",
                f"training.cutoff_len={args.cutoff}", "training.report_every_steps=5",
                "training.checkpoint_every_steps=100000", "training.validation_fraction=0",
                f"training.cpus_per_worker={2 / workers}"])
            run_storage = Storage(f"{tmp}/out-{workers}")
            run_storage.write_parquet("gla_Latn/dataset/data/part-0.parquet",
                                      pa.Table.from_pylist(synthetic_rows(args.rows)))
            if measure_bare is None:  # on the first run's rows, before and after each
                student = ModelSource.parse(config.student.model).materialize()
                train_rows = prepare_data(config, lang, run_storage, student).train.take_all()
                measure_bare = functools.partial(bare_loop, student,
                                                 train_rows[:args.bare_rows], config)
                bare.append(measure_bare()["tokens_per_second"])
            manifest = train_language(config, lang, run_storage)
            bare.append(measure_bare()["tokens_per_second"])
            windows = [m["tokens_per_second"] for m in manifest["history"]
                       if m.get("tokens_per_second")][1:]  # the first window: start-up
            ours = sum(windows) / len(windows)
            around = (bare[-2] + bare[-1]) / 2
            runs.append({"workers": workers, "packed_rows": manifest["train_rows"],
                         "packing_efficiency": manifest["packing_efficiency"],
                         "ray_train_tokens_per_second": round(ours, 1),
                         "bare_loop_tokens_per_second": round(around, 1),
                         "ratio": round(ours / around, 3),
                         "wall_seconds": manifest["wall_seconds"]})
            print(json.dumps(runs[-1]), flush=True)
    ray.shutdown()
    result = {
        "model": config.student.model,
        "zero_stage": config.training.zero_stage,
        "cutoff_len": args.cutoff,
        "bare_loop_tokens_per_second": bare,  # before the first of ours and after each
        "packing_efficiency": runs[0]["packing_efficiency"],
        "runs": runs,
    }
    from plots import save_result  # benchmarks/plots.py, next to this script
    save_result("training", result)


if __name__ == "__main__":
    main()
