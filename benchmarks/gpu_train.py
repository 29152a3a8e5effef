"""GPU training-step benchmark (one CUDA GPU, no Ray needed): prints JSON and writes
benchmarks/results/gpu_train.json.

In one process, on a Granite-4.0-Micro-shaped model (the real config shipped in
kakugo/data: 40 layers, hidden 2560, ~3.4B parameters; random weights) with packed rows
of `--cutoff` tokens:
  (a) a bare loop: transformers model + fused torch AdamW, bf16, no DeepSpeed;
  (b) our training step: DeepSpeed ZeRO-3 at world size 1 with our packing and masking
      (kakugo.train.data.model_inputs, kakugo.train.engine.deepspeed_config and
      initialize_engine, with its fp32 gradient norm), fp32 master weights by default;
      `--master-weights bf16` times it in pure bf16, the bare loop's numerics, and
      `--bare-master-weights` gives the bare loop fp32 master weights instead.
For each: tokens/s, model FLOPs utilisation against a measured bf16 matmul peak, peak
memory; and the ratio (b)/(a). `--zero NAME=JSON` times (b) with the JSON merged into
DeepSpeed's `zero_optimization` section (one setting per process: DeepSpeed does not give
all of an engine's memory back); the key `"layer_fetch": true|false` overrides our
`training.zero3_layer_fetch` (each decoder layer one ZeRO-3 fetch unit; on by default).

    python benchmarks/gpu_train.py                      # on a GPU machine
    python benchmarks/gpu_train.py --tiny --device cpu  # the same code path on CPU
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def model_config(tiny: bool, attention: str):
    from kakugo.models import TINY_GRANITE, granite_config
    from kakugo.train.attention import TORCH_VARLEN, register

    if attention == TORCH_VARLEN:
        register()
    config = granite_config(**(TINY_GRANITE if tiny else {}))
    config._attn_implementation = attention
    return config


def packed_rows(n: int, cutoff: int, vocab: int, seed: int = 0) -> list[dict]:
    """Rows packed from samples of 200..2000 tokens, labels on the last 60% of each."""
    import random

    from kakugo.train.data import IGNORE_INDEX, pack

    rng = random.Random(seed)
    samples = []
    while sum(len(s["input_ids"]) for s in samples) < n * cutoff:
        length = rng.randint(200, min(2000, cutoff))
        ids = [rng.randrange(vocab) for _ in range(length)]
        cut = int(length * 0.4)
        samples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * cut + ids[cut:]})
    return list(pack(samples, cutoff))[:n]


def matmul_peak(device, dtype, size: int = 8192, repeat: int = 20) -> float:
    """Measured dense matmul FLOP/s in `dtype` (the denominator of MFU)."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(repeat):
        a @ b
    sync(device)
    return 2 * size**3 * repeat / (time.perf_counter() - started)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_token(config, params: int, seq: float) -> float:
    """6N for the dense weights plus causal attention (12 * layers * hidden * seq / 2)."""
    return 6 * params + 6 * config.num_hidden_layers * config.hidden_size * seq


def run(step, rows, device, warmup: int) -> dict:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tokens, started = 0, None
    for index, row in enumerate(rows):
        if index == warmup:
            sync(device)
            started, tokens = time.perf_counter(), 0
        step(row)
        tokens += len(row["input_ids"])
    sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"tokens_per_second": tokens / seconds, "seconds": seconds,
            "peak_memory_gib": round(peak, 2) if peak else None}


# CUDA runtime calls in which the host waits for the GPU
HOST_WAITS = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize")


def idle_gaps(intervals):
    """(length, item) for each gap between (start, end, item) intervals in microseconds,
    overlapping ones merged (kernels on several streams overlap), with the item whose
    interval ends the gap."""
    reach = None
    for start, end, item in sorted(intervals, key=lambda interval: interval[0]):
        if reach is not None and start > reach:
            yield start - reach, item
        reach = end if reach is None else max(reach, end)


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals in microseconds, in seconds: the time
    at least one kernel ran (their span less the gaps; their sum counts overlaps twice)."""
    if not intervals:
        return 0.0
    span = max(end for _, end in intervals) - min(start for start, _ in intervals)
    gaps = sum(gap for gap, _ in idle_gaps([(start, end, None) for start, end in intervals]))
    return (span - gaps) / 1e6


# Python frames a launch site names: ours, DeepSpeed's and transformers' (not DeepSpeed's
# NVTX wrapper, which wraps most of its functions)
SITE_FRAMES = ("kakugo/", "deepspeed/", "transformers/", "gpu_train.py")
WRAPPER_FRAMES = ("deepspeed/utils/nvtx.py",)
AUTOGRAD_NODE = "autograd::engine::evaluate_function: "  # a backward op's parent


def launch_site(op, frames: int = 2) -> str:
    """A host op and the innermost `frames` of its parents that say where it comes from:
    the autograd node that ran it in a backward pass, and Python frames of SITE_FRAMES code
    (in a profile taken with_stack, the Python calls are the op's parents)."""
    names = [op.name]
    parent = op.cpu_parent
    while parent is not None and len(names) <= frames:
        name = parent.name
        ours = "): " in name and any(part in name for part in SITE_FRAMES) and \
            not any(part in name for part in WRAPPER_FRAMES)
        if ours or name.startswith(AUTOGRAD_NODE):
            names.append(name)
        parent = parent.cpu_parent
    return " < ".join(names)


def idle_sites(events, min_gap_us: float = 20.0, top: int = 12) -> dict:
    """Where the GPU idles: each gap of at least `min_gap_us` between device activities (any
    stream) is charged to the launch site of the activity that ends it, the host code the
    GPU waited for. The idle total and the sites with the most idle time."""
    from torch.autograd import DeviceType

    device = [(e.time_range.start, e.time_range.end, e) for e in events
              if e.device_type == DeviceType.CUDA]
    launchers = {e.id: e for e in events if e.device_type == DeviceType.CPU and e.id > 0
                 and not getattr(e, "linked_correlation_id", 0)}
    sites: dict[str, list] = {}
    for gap, activity in idle_gaps(device):
        if gap < min_gap_us:
            continue
        op = launchers.get(getattr(activity, "linked_correlation_id", 0))
        site = launch_site(op) if op else f"{activity.name} (launch not found)"
        entry = sites.setdefault(site, [0, 0.0])
        entry[0] += 1
        entry[1] += gap
    ranked = sorted(sites.items(), key=lambda item: -item[1][1])
    return {"idle_seconds": round(sum(us for _, us in sites.values()) / 1e6, 6),
            "gaps": sum(n for n, _ in sites.values()),
            "sites": [{"site": site, "gaps": n, "seconds": round(us / 1e6, 6)}
                      for site, (n, us) in ranked[:top]]}


def profile(step, rows, device, name: str) -> dict:
    """Two steps under torch.profiler. Writes the busiest operators to
    results/NAME-profile.txt (and, on a GPU, the timeline to NAME-trace.json.gz) and returns
    how much of the wall time the GPU was busy (any kernel running), the summed kernel time,
    and the host's waits for the GPU (synchronize calls: how many, how long). A third step,
    profiled with Python stacks (slower on the host, so its gaps are upper bounds), gives
    the code the GPU idled for (`step_with_stacks`)."""
    import torch
    from torch.profiler import ProfilerActivity

    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    sync(device)
    started = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for row in rows[:2]:
            step(row)
        sync(device)
    wall = time.perf_counter() - started
    RESULTS.mkdir(exist_ok=True)
    sort = "self_cuda_time_total" if gpu else "self_cpu_time_total"
    (RESULTS / f"{name}-profile.txt").write_text(
        prof.key_averages().table(sort_by=sort, row_limit=30))
    if gpu:
        prof.export_chrome_trace(str(RESULTS / f"{name}-trace.json.gz"))  # gzipped by torch
    events = prof.events()
    kernels = [(e.time_range.start, e.time_range.end) for e in events
               if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = union_seconds(kernels)
    waits: dict[str, dict] = {}
    for e in events:
        if e.name in HOST_WAITS:
            entry = waits.setdefault(e.name, {"calls": 0, "seconds": 0.0})
            entry["calls"] += 1
            entry["seconds"] += e.time_range.elapsed_us() / 1e6
    started = time.perf_counter()
    with torch.profiler.profile(activities=activities, with_stack=True) as prof:
        step(rows[2])
        sync(device)
    stacked = {"wall_seconds": round(time.perf_counter() - started, 3),
               **idle_sites(prof.events())}
    return {"profiled_steps": 2, "wall_seconds": round(wall, 3),
            "device_busy_seconds": round(busy, 3),
            "device_busy_share": round(busy / wall, 3),
            "kernel_seconds": round(sum(b - a for a, b in kernels) / 1e6, 3),
            "host_waits": {k: {"calls": v["calls"], "seconds": round(v["seconds"], 4)}
                           for k, v in waits.items()},
            "step_with_stacks": stacked}


def zero3_engine(model, training: dict, zero: dict | None = None, layer_fetch: bool = True,
                 deepcompile: bool = False):
    """Our DeepSpeed ZeRO-3 engine at world size 1 around `model`: the config
    kakugo.train.engine.deepspeed_config builds from `training` (a TrainingConfig dump), with
    `zero` merged into its zero_optimization section, and torch AdamW (fused on a GPU)."""
    import deepspeed
    import torch

    from kakugo.train.engine import deepspeed_config, fetch_whole_layers, initialize_engine

    gpu = training["use_gpu"]
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511", "RANK": "0",
                        "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(name, value)
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")
    ds_config = deepspeed_config(training, gpu)
    ds_config["zero_optimization"].update(zero or {})
    if deepcompile:
        ds_config["compile"] = {"deepcompile": True}
    if layer_fetch:
        fetch_whole_layers(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=gpu)
    engine, *_ = initialize_engine(model, optimizer, ds_config)
    if deepcompile:
        engine.compile()
    return engine


def main() -> None:
    import torch
    from pydantic import ValidationError

    from kakugo.config import TrainingConfig
    from kakugo.train.data import collate, model_inputs

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 4-layer model (code-path check)")
    parser.add_argument("--cutoff", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true",
                        help="activation checkpointing in both loops")
    parser.add_argument("--attention", default="sdpa")
    parser.add_argument("--zero", default="", metavar="NAME=JSON",
                        help="the ZeRO-3 setting to time (JSON merged into zero_optimization; "
                             "\"layer_fetch\": true|false for per-layer fetches)")
    parser.add_argument("--deepcompile", action="store_true",
                        help="experiment: our step compiled by DeepSpeed's DeepCompile "
                             "(compile.deepcompile + engine.compile(): ZeRO-3's fetches and "
                             "releases scheduled in the compiled graph instead of Python "
                             "module hooks; CUDA only, builds DeepSpeed's `dc` op)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile two steps of each loop (results/*-profile.txt)")
    parser.add_argument("--bare-master-weights", action="store_true",
                        help="the bare loop keeps fp32 weights and AdamW states and runs "
                             "under bf16 autocast (as our step does), instead of pure bf16")
    parser.add_argument("--master-weights", choices=["fp32", "bf16"], default="fp32",
                        help="our step's training.master_weights: fp32 (mixed precision, the "
                             "default) or bf16 (pure bf16: the bare loop's numerics)")
    parser.add_argument("--unmasked", action="store_true",
                        help="plain causal attention over the packed row (samples see each "
                             "other): a speed reference for what the packing mask costs")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    try:  # our step's training section, checked before anything runs
        training = TrainingConfig(
            num_workers=1, use_gpu=gpu, precision="bf16" if gpu else "fp32",
            master_weights=args.master_weights, micro_batch_size=1,
            gradient_accumulation_steps=1, max_grad_norm=1.0, zero_stage=3,
            gradient_checkpointing=args.checkpointing, attention=args.attention).model_dump()
    except ValidationError as err:
        parser.error(err.errors()[0]["msg"])
    config = model_config(args.tiny, args.attention)
    rows = packed_rows(args.steps, args.cutoff, config.vocab_size)
    mean_len = sum(len(r["input_ids"]) for r in rows) / len(rows)
    seq = sum(sum(n * n for n in _sample_lengths(r)) for r in rows) / sum(
        len(r["input_ids"]) for r in rows)
    peak = matmul_peak(device, dtype, 8192 if gpu else 1024, 20 if gpu else 3)

    def build(weights_dtype=dtype):
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        with device:
            model = AutoModelForCausalLM.from_config(config, dtype=weights_dtype)
        if args.checkpointing:
            model.gradient_checkpointing_enable()
        model.config.use_cache = False
        return model

    def batch(row):
        inputs = model_inputs(collate([row], 0), dtype, args.attention, device)
        if args.unmasked:
            inputs.pop("attention_mask", None)
        return inputs

    master = args.bare_master_weights
    zero_name, _, zero_text = args.zero.partition("=")
    name = ("gpu_train" + ("-checkpointing" if args.checkpointing else "")
            + ("-unmasked" if args.unmasked else "")
            + ("-master" if master else "")
            + ("-bf16_master" if args.master_weights == "bf16" else "")
            + ("" if args.attention == "sdpa" else f"-{args.attention}")
            + (f"-{zero_name}" if args.zero else "")
            + ("-deepcompile" if args.deepcompile else "")
            + ("" if gpu else "-cpu-check"))

    # (a) the bare loop
    model = build(torch.float32 if master else dtype)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=gpu)

    def bare_step(row):
        with torch.autocast(device.type, dtype=dtype, enabled=master and gpu):
            loss = model(**batch(row)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    bare = run(bare_step, rows, device, args.warmup)
    if args.profile:
        bare["profile"] = profile(bare_step, rows, device, f"{name}-bare")
    model = optimizer = None  # the bare loop's memory goes back before ours is built
    if gpu:
        torch.cuda.empty_cache()

    # (b) our step: DeepSpeed ZeRO-3, world size 1
    zero_setting = json.loads(zero_text) if zero_text else {}
    overrides = dict(zero_setting)
    layer_fetch = overrides.pop("layer_fetch", training["zero3_layer_fetch"])
    engine = zero3_engine(build(), training, overrides, layer_fetch, args.deepcompile)

    def ours_step(row):
        loss = engine(**batch(row)).loss
        engine.backward(loss)
        engine.step()

    ours = run(ours_step, rows, device, args.warmup)
    if args.profile:
        ours["profile"] = profile(ours_step, rows, device, f"{name}-ours")
    per_token = flops_per_token(config, params, seq)
    for result in (bare, ours):
        result["mfu"] = round(result["tokens_per_second"] * per_token / peak, 4)
        result["tokens_per_second"] = round(result["tokens_per_second"], 1)
    out = {
        "benchmark": "gpu_train",
        "device": torch.cuda.get_device_name(device) if gpu else f"{platform.machine()} CPU",
        "model": "granite-4.0-micro shape" + (" (tiny)" if args.tiny else ""),
        "parameters": params,
        "cutoff_len": args.cutoff,
        "mean_row_tokens": round(mean_len, 1),
        "activation_checkpointing": args.checkpointing,
        "bare_loop_weights": ("fp32 master weights, bf16 autocast" if master
                              else str(dtype).removeprefix("torch.")),
        "attention": args.attention + (" causal, no packing mask" if args.unmasked else ""),
        "dtype": str(dtype).removeprefix("torch."),
        "measured_matmul_peak_tflops": round(peak / 1e12, 1),
        "bare_loop": bare,
        "ours_zero3": ours,
        "ratio_ours_over_bare": round(ours["tokens_per_second"] / bare["tokens_per_second"], 3),
        "zero3_layer_fetch": layer_fetch,
        "ours_master_weights": args.master_weights,
    }
    if args.deepcompile:
        out["deepcompile"] = True
    if args.zero:
        out["zero_setting"] = {zero_name: zero_setting}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


def _sample_lengths(row) -> list[int]:
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
    return [b - a for a, b in itertools.pairwise(starts)]


if __name__ == "__main__":
    main()
