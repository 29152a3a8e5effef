"""Memory traffic of a training step outside the model, per parameter: prints JSON and
writes benchmarks/results/zero3_traffic.json.

Besides the model's forward and backward, a step streams every weight, gradient and
optimizer state through memory in elementwise passes (gradient norm and clipping, the
optimizer, copies between buffers). On a GPU those passes are bound by memory bandwidth,
so their bytes set a floor on the time they take. This script counts them on CPU, where
the same Python code runs: a torch function mode sees every tensor operation that
DeepSpeed's hooks and optimizer wrapper (or the bare loop's clipping) call, and the bytes
each one reads and writes are summed by call site. Compared:
  - the bare loop of benchmarks/gpu_train.py: bf16 weights, clip_grad_norm_, fused AdamW;
  - our step (DeepSpeed ZeRO-3 at world size 1, kakugo.train.loop.deepspeed_config) with
    `training.master_weights` fp32 (the default) and bf16.
The optimizer's own update is counted as the single pass of a fused AdamW kernel (reads
weights, gradients and both moments, writes weights and moments), since the CPU runs
torch's multi-tensor path instead. Model-side operations (embedding, matmuls in
DeepSpeed's linear) are left out: both loops do them. The totals are scaled to the
Granite-4.0-Micro parameter count and turned into milliseconds at `--bandwidth` (default
4.8 TB/s, an H200's peak: a lower bound on the time).

    python benchmarks/zero3_traffic.py
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import traceback
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# calls that move no data (views, metadata) or that belong to the model's own compute
NO_TRAFFIC = {"__get__", "__set__", "numel", "is_complex", "narrow", "view", "view_as",
              "chunk", "split", "__getitem__", "size", "dim", "detach", "t", "data_ptr",
              "element_size", "is_floating_point", "requires_grad_", "record_stream",
              "__len__", "_has_compatible_shallow_copy_type", "untyped_storage",
              "storage_offset", "nelement", "is_contiguous", "stride", "flatten"}
MODEL_SITES = ("deepspeed/runtime/zero/linear.py", "deepspeed/runtime/engine.py")
LIBRARY_PATHS = ("deepspeed/", "torch/nn/utils/")


def fused_adamw_bytes(weights: int, states: int) -> int:
    """Bytes per parameter of one fused AdamW pass: weights, gradient (the weights' size
    here) and two moments read; weights and two moments written."""
    return 2 * weights + 2 * states + weights + 2 * states


def _tensors(value):
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def traffic_mode():
    """A torch function mode that sums the bytes each library call site moves."""
    from torch.overrides import TorchFunctionMode

    class Traffic(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.by_site: collections.Counter = collections.Counter()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = getattr(func, "__name__", str(func))
            frames = [f for f in traceback.extract_stack()[:-1]
                      if any(p in f.filename for p in LIBRARY_PATHS)]
            if name in NO_TRAFFIC or not frames:
                return out
            frame = frames[-1]
            site = frame.filename.split("site-packages/")[-1]
            if site.startswith(MODEL_SITES):
                return out
            inputs = list(_tensors(list(args) + list((kwargs or {}).values())))
            written = _nbytes(_tensors(args[0])) if args else 0
            if name == "copy_" or out is None:  # writes the first argument, reads the rest
                moved = _nbytes(inputs)
            elif name.endswith("_"):  # in place: reads all, writes the first argument
                moved = _nbytes(inputs) + written
            else:  # reads the inputs, writes new outputs; nothing when it returns an input
                ptrs = {t.data_ptr() for t in inputs}
                new = [t for t in _tensors(out) if t.data_ptr() not in ptrs]
                moved = _nbytes(inputs) + _nbytes(new) if new else 0
            self.by_site[f"{name} ({site}:{frame.lineno} {frame.name})"] += moved
            return out

    return Traffic()


def granite_micro_parameters() -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from kakugo.models import granite_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(granite_config())
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from kakugo.config import TrainingConfig
    from kakugo.models import TINY_GRANITE, granite_config
    from kakugo.train.loop import deepspeed_config, fetch_whole_layers

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bandwidth", type=float, default=4.8, help="TB/s")
    args = parser.parse_args()
    # a small Granite whose parameters sit in the decoder layers, as in the real model
    config = granite_config(**{**TINY_GRANITE, "hidden_size": 512, "intermediate_size": 1024,
                               "shared_intermediate_size": 1024, "vocab_size": 4096,
                               "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1},
                            use_cache=False)
    batch = torch.randint(0, config.vocab_size, (1, 64))

    def model():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)

    def measure(step, params: int) -> tuple[float, dict]:
        for _ in range(2):
            step()
        mode = traffic_mode()
        with mode:
            step()
        sites = {k: round(v / params, 2) for k, v in mode.by_site.most_common() if v >= params / 10}
        return sum(mode.by_site.values()) / params, sites

    results = {}
    bare = model()
    params = sum(p.numel() for p in bare.parameters())
    optimizer = torch.optim.AdamW(bare.parameters(), lr=1e-5)

    def bare_step():
        bare(input_ids=batch, labels=batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(bare.parameters(), 1.0)
        optimizer.zero_grad(set_to_none=True)  # the update itself: counted as fused AdamW

    other, sites = measure(bare_step, params)
    results["bare_bf16"] = {"other_bytes_per_param": round(other, 1),
                            "adamw_bytes_per_param": fused_adamw_bytes(2, 2), "sites": sites}

    import deepspeed

    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29512", "RANK": "0",
                        "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(name, value)
    deepspeed.init_distributed(dist_backend="gloo")
    for master in ("fp32", "bf16"):
        training = TrainingConfig(num_workers=1, use_gpu=False, precision="bf16",
                                  master_weights=master, zero_stage=3,
                                  gradient_checkpointing=False).model_dump()
        ds_config = deepspeed_config(training, use_gpu=False)
        ds_config["zero_optimization"]["overlap_comm"] = True  # as on a GPU
        ours = model()
        fetch_whole_layers(ours)
        engine, *_ = deepspeed.initialize(
            model=ours, optimizer=torch.optim.AdamW(ours.parameters(), lr=1e-5),
            config=ds_config)
        inner = engine.optimizer.optimizer
        inner.step = lambda closure=None: None  # the update itself: counted as fused AdamW

        def ours_step(engine=engine):
            engine.backward(engine(input_ids=batch, labels=batch).loss)
            engine.step()

        other, sites = measure(ours_step, params)
        width = 4 if master == "fp32" else 2
        results[f"ours_master_{master}"] = {
            "other_bytes_per_param": round(other, 1),
            "adamw_bytes_per_param": fused_adamw_bytes(width, width), "sites": sites}

    full = granite_micro_parameters()

    def ms(bytes_per_param: float) -> float:
        return round(bytes_per_param * full / (args.bandwidth * 1e12) * 1e3, 1)

    for result in results.values():
        total = result["other_bytes_per_param"] + result["adamw_bytes_per_param"]
        result["bytes_per_param"] = round(total, 1)
        result["granite_micro_gb_per_step"] = round(total * full / 1e9, 1)
        result["ms_at_bandwidth"] = ms(total)
        result["extra_ms_over_bare"] = ms(total - results["bare_bf16"]["bytes_per_param"])
    out = {"benchmark": "zero3_traffic", "device": f"{platform.machine()} CPU",
           "traced_model_parameters": params, "granite_micro_parameters": full,
           "bandwidth_tb_per_s": args.bandwidth, **results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "zero3_traffic.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
