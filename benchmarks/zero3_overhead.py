"""What DeepSpeed ZeRO-3 adds to a training step beyond the model's own work, measured on
CPU: prints JSON and writes benchmarks/results/zero3_overhead.json. Two parts, each the
bare loop of benchmarks/gpu_train.py (bf16 weights, clip_grad_norm_, AdamW) against our
step (DeepSpeed ZeRO-3 at world size 1 built by kakugo.train.engine.initialize_engine from
its deepspeed_config, with zero3_layer_fetch):

Memory traffic per parameter. Besides the model's forward and backward, a step streams
every weight, gradient and optimizer state through memory in elementwise passes (gradient
norm and clipping, the optimizer, copies between buffers). On a GPU those passes are bound
by memory bandwidth, so their bytes set a floor on the time they take. They are counted
here on CPU, where the same Python code runs: a torch dispatch mode sees every tensor
operation that DeepSpeed's hooks and optimizer wrapper (or the bare loop's clipping) run,
and the bytes each one reads and writes are summed by call site, for our step with
`training.master_weights` fp32 (the default) and bf16. The optimizer's own update is
counted as the single pass of a fused AdamW kernel (reads weights, gradients and both
moments, writes weights and moments), since the CPU runs torch's multi-tensor path
instead. Model-side operations (embedding, matmuls in DeepSpeed's linear) are left out:
both loops do them. The totals are scaled to the Granite-4.0-Micro parameter count and
turned into milliseconds at `--bandwidth` (default 4.8 TB/s, an H200's peak: a lower
bound on the time).

Host time per step. On a GPU the host must queue a step's kernels faster than the GPU runs
them; the Python that ZeRO-3's hooks add is GPU idle time wherever the host is behind
(after a synchronisation, in the optimizer step). Timed here on a model with
Granite-4.0-Micro's 40 layers and a tiny width, where the step is almost all host work,
and DeepSpeed's sizes scaled to it (zero_settings_at_scale): milliseconds per step of each
loop (median of interleaved rounds), with and without activation checkpointing, our step
with each linear layer (DeepSpeed's memory-efficient one, torch's own: our config picks
torch's under checkpointing).

    python benchmarks/zero3_overhead.py
"""

from __future__ import annotations

import argparse
import collections
import functools
import statistics
import time
import traceback

# call sites of the model's own compute (both loops do it)
MODEL_SITES = ("deepspeed/runtime/zero/linear.py", "deepspeed/runtime/engine.py")
LIBRARY_PATHS = ("deepspeed/", "torch/nn/utils/")


def fused_adamw_bytes(width: int) -> int:
    """Bytes per parameter of one fused AdamW pass over `width`-byte weights, gradients and
    moments: weights, gradient and two moments read; weights and two moments written."""
    return 7 * width


def _tensors(value):
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _same_data(a, b) -> bool:
    return (a.data_ptr(), a.shape, a.stride(), a.dtype) == (b.data_ptr(), b.shape, b.stride(),
                                                            b.dtype)


def traffic_mode(library_paths: tuple[str, ...] = LIBRARY_PATHS):
    """A torch dispatch mode that sums the bytes each call site in `library_paths` moves.
    It sees every aten op, also those run in backward hooks (where ZeRO-3 buckets and
    reduces gradients), which a function mode does not."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Traffic(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.by_site: collections.Counter = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func.is_view:  # no data moved
                return out
            frames = [f for f in traceback.extract_stack()[:-1]
                      if any(p in f.filename for p in library_paths)]
            if not frames:
                return out
            frame = frames[-1]
            site = frame.filename.split("site-packages/")[-1]
            if site.startswith(MODEL_SITES):
                return out
            schema = func._schema
            values = [*args, *(kwargs.get(a.name) for a in schema.arguments[len(args):])]
            name = func.overloadpacket.__name__
            if name == "copy_" and _same_data(*args[:2]):  # torch returns at once
                return out
            read, updated, overwritten = [], [], []  # updated: read and written in place
            for arg, value in zip(schema.arguments, values, strict=False):
                if not (arg.alias_info and arg.alias_info.is_write):
                    # a collective (not annotated) writes its output tensor, returned below
                    if not (func.namespace == "c10d" and arg.name.startswith("output")):
                        read.extend(_tensors(value))
                elif arg.name == "out" or name == "copy_":
                    overwritten.extend(_tensors(value))
                else:
                    updated.extend(_tensors(value))
            moved = _nbytes(read) + 2 * _nbytes(updated) + _nbytes(overwritten)
            if not (updated or overwritten):  # writes what it returns
                moved += _nbytes(_tensors(out))
            self.by_site[f"{name} ({site}:{frame.lineno} {frame.name})"] += moved
            return out

    return Traffic()


@functools.cache
def granite_micro_parameters() -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from kakugo.models import granite_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(granite_config())
    return sum(p.numel() for p in model.parameters())


def small_granite(**dims):
    """A Granite config of the given dimensions with a small vocabulary (token ids in it)."""
    from kakugo.models import TINY_GRANITE, granite_config

    return granite_config(**{**TINY_GRANITE, "pad_token_id": 0, "bos_token_id": 1,
                             "eos_token_id": 1, **dims}, use_cache=False)


def build(config, checkpointing: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model.train()


def bare_loop(model):
    """The bare loop's step and its AdamW (the caller decides whether to step it)."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(batch, update: bool = True):
        model(input_ids=batch, labels=batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if update:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def zero_settings_at_scale(model) -> dict:
    """DeepSpeed's ZeRO-3 sizes (in elements) scaled from Granite-4.0-Micro to `model` (not
    yet partitioned), so that a small model is fetched, released, bucketed and stepped as
    the real one is: prefetches of under one layer, parameters kept gathered while reused
    within about a third of the model, gradients reduced in several buckets, the optimizer
    stepped in several sub-groups. Only the 1-D norm weights stay resident (persistent),
    as in the real model, where every weight matrix is above the persistence threshold;
    left at DeepSpeed's sizes, a model of tiny width would keep every weight resident and
    run none of the fetch and release work."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    defaults = DeepSpeedZeroConfig(stage=3)
    scale = sum(p.numel() for p in model.parameters()) / granite_micro_parameters()
    settings = {name: max(1, int(getattr(defaults, field) * scale)) for name, field in (
        ("stage3_prefetch_bucket_size", "prefetch_bucket_size"),
        ("stage3_max_live_parameters", "max_live_parameters"),
        ("stage3_max_reuse_distance", "max_reuse_distance"),
        ("reduce_bucket_size", "reduce_bucket_size"),
        ("sub_group_size", "sub_group_size"))}
    return {**settings, "stage3_param_persistence_threshold": model.config.hidden_size + 1}


def our_engine(model, zero: dict | None = None, at_scale: bool = True, **training):
    """Our ZeRO-3 engine at world size 1 around `model` (gpu_train.zero3_engine, with the
    GPU's overlap_comm; `at_scale`: DeepSpeed's sizes scaled to the model) and its step."""
    from gpu_train import zero3_engine

    from kakugo.config import TrainingConfig

    t = TrainingConfig(num_workers=1, use_gpu=False, precision="bf16", zero_stage=3,
                       **training).model_dump()
    scaled = zero_settings_at_scale(model) if at_scale else {}
    engine = zero3_engine(model, t, {"overlap_comm": True, **scaled, **(zero or {})})

    def step(batch):
        engine.backward(engine(input_ids=batch, labels=batch).loss)
        engine.step()

    return engine, step


def traffic(bandwidth: float) -> dict:
    import torch

    # the parameters sit in the decoder layers, as in the real model
    config = small_granite(hidden_size=512, intermediate_size=1024,
                           shared_intermediate_size=1024, vocab_size=4096)
    batch = torch.randint(0, config.vocab_size, (1, 64))

    def measure(step, params: int) -> tuple[float, dict]:
        for _ in range(2):
            step()
        mode = traffic_mode()
        with mode:
            step()
        sites = {k: round(v / params, 2) for k, v in mode.by_site.most_common()
                 if v >= params / 10}
        return sum(mode.by_site.values()) / params, sites

    bare = build(config)
    params = sum(p.numel() for p in bare.parameters())
    bare_step = bare_loop(bare)
    # the update itself is counted as one fused AdamW pass
    other, sites = measure(lambda: bare_step(batch, update=False), params)
    results = {"bare_bf16": {"other_bytes_per_param": round(other, 1),
                             "adamw_bytes_per_param": fused_adamw_bytes(2), "sites": sites}}
    for master in ("fp32", "bf16"):
        # DeepSpeed's own sizes: as in the real model, all gradients take the contiguous
        # bucket path (scaled, the embedding, larger here relative to the model, would not)
        engine, step = our_engine(build(config), at_scale=False, master_weights=master,
                                  gradient_checkpointing=False)
        engine.optimizer.optimizer.step = lambda closure=None: None  # the fused pass
        other, sites = measure(lambda step=step: step(batch), params)
        width = 4 if master == "fp32" else 2
        results[f"ours_master_{master}"] = {
            "other_bytes_per_param": round(other, 1),
            "adamw_bytes_per_param": fused_adamw_bytes(width), "sites": sites}

    full = granite_micro_parameters()

    def ms(bytes_per_param: float) -> float:
        return round(bytes_per_param * full / (bandwidth * 1e12) * 1e3, 1)

    for result in results.values():
        total = result["other_bytes_per_param"] + result["adamw_bytes_per_param"]
        result["bytes_per_param"] = round(total, 1)
        result["granite_micro_gb_per_step"] = round(total * full / 1e9, 1)
        result["ms_at_bandwidth"] = ms(total)
        result["extra_ms_over_bare"] = ms(total - results["bare_bf16"]["bytes_per_param"])
    return {"traced_model_parameters": params, "granite_micro_parameters": full,
            "bandwidth_tb_per_s": bandwidth, **results}


def host_time(rounds: int, steps: int, torch_linear) -> dict:
    """`torch_linear`: torch.nn.functional.linear as it was before any engine was built."""
    import torch
    from deepspeed.runtime.zero.linear import zero3_linear_wrap

    def with_linear(step, linear):
        """ZeRO-3 swaps torch's linear for its own process-wide, when an engine is built:
        each loop runs with the one it would have on its own."""
        def run(batch):
            torch.nn.functional.linear = linear
            step(batch)
        return run

    config = small_granite(hidden_size=64, intermediate_size=128,
                           shared_intermediate_size=128, vocab_size=512,
                           num_hidden_layers=40)
    batch = torch.randint(0, config.vocab_size, (1, 16))
    result = {"layers": config.num_hidden_layers, "tokens": batch.numel()}
    for checkpointing in (False, True):
        loops = {"bare": with_linear(bare_loop(build(config, checkpointing)), torch_linear)}
        for efficient in (True, False):
            _, step = our_engine(build(config, checkpointing),
                                 zero={"memory_efficient_linear": efficient},
                                 gradient_checkpointing=checkpointing)
            loops[f"ours_{'deepspeed' if efficient else 'torch'}_linear"] = with_linear(
                step, zero3_linear_wrap if efficient else torch_linear)
        timings: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(rounds):  # interleaved: the machine's drift hits every loop alike
            for name, step in loops.items():
                for _ in range(3):
                    step(batch)
                started = time.process_time()  # CPU time: what the host spends
                for _ in range(steps):
                    step(batch)
                timings[name].append((time.process_time() - started) / steps * 1e3)
        torch.nn.functional.linear = torch_linear
        ms = {name: round(statistics.median(t), 1) for name, t in timings.items()}
        ours = "ours_torch_linear" if checkpointing else "ours_deepspeed_linear"
        result["checkpointing" if checkpointing else "no_checkpointing"] = {
            "ms_per_step": ms, "our_config": ours,
            "our_extra_host_ms": round(ms[ours] - ms["bare"], 1)}
    return result


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bandwidth", type=float, default=4.8, help="TB/s")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)  # host time: one thread, as the GPU loop's
    torch_linear = torch.nn.functional.linear
    out = {"traffic": traffic(args.bandwidth),
           "host_time": host_time(args.rounds, args.steps, torch_linear)}
    from plots import save_result  # benchmarks/plots.py, next to this script
    save_result("zero3_overhead", out)


if __name__ == "__main__":
    main()
