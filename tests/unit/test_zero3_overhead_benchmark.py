"""The byte counting of benchmarks/zero3_overhead.py (the benchmark itself traces DeepSpeed)."""

import importlib.util
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location(
    "zero3_overhead", Path(__file__).resolve().parents[2] / "benchmarks" / "zero3_overhead.py")
zero3_overhead = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zero3_overhead)


def test_clipping_reads_the_gradients_and_rewrites_them_in_place():
    params = [torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16)) for n in (1000, 3000)]
    for p in params:
        p.grad = torch.full_like(p, 2.0)
    mode = zero3_overhead.traffic_mode()
    with mode:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
    by_op = {site.split(" ")[0]: moved for site, moved in mode.by_site.items()}
    # the norm reads 4000 bf16 values; the in-place scaling reads and writes them (both
    # also touch a few bytes of scalars)
    assert 0 <= by_op["_foreach_norm"] - 4000 * 2 <= 16
    assert 0 <= by_op["_foreach_mul_"] - 4000 * 2 * 2 <= 16


def test_only_library_calls_that_move_data_count():
    x = torch.ones(1000)
    mode = zero3_overhead.traffic_mode()
    with mode:
        (x * 2).view(10, 100)  # not called from a library: not counted
        # a library call: views of the parameters (nothing moved), then one cat
        torch.nn.utils.parameters_to_vector([torch.nn.Parameter(x)])
    (site, moved), = mode.by_site.items()
    assert site.startswith("cat (") and moved == 1000 * 4 * 2


def test_copies_in_backward_hooks_count():
    """ZeRO-3 copies gradients into its buckets in hooks the autograd engine runs."""
    weight = torch.nn.Parameter(torch.ones(1000))
    bucket = torch.empty(1000)

    def copy_to_bucket(param):  # a call site of this file, traced as a library's
        bucket.copy_(param.grad)

    weight.register_post_accumulate_grad_hook(copy_to_bucket)
    mode = zero3_overhead.traffic_mode(library_paths=(Path(__file__).name,))
    with mode:
        (weight * 3).sum().backward()
    (site, moved), = ((s, m) for s, m in mode.by_site.items() if "copy_to_bucket" in s)
    assert site.startswith("copy_ (") and moved == 1000 * 4 * 2


def test_a_copy_onto_the_same_data_moves_nothing():
    """As in torch, which returns at once (a master copy that shares its weights' memory)."""
    weights, other = torch.ones(1000), torch.zeros(1000)
    master = torch.empty(0)
    master.data = weights.data
    mode = zero3_overhead.traffic_mode(library_paths=(Path(__file__).name,))
    with mode:
        weights.data.copy_(master.data)
        weights.data.copy_(other)
    assert sum(mode.by_site.values()) == 1000 * 4 * 2


def test_zero_sizes_scaled_to_a_small_model_keep_the_real_models_layout():
    """The host-time model (40 layers of tiny width) under the scaled ZeRO-3 sizes: the
    same parameters stay resident as in Granite-4.0-Micro under DeepSpeed's own sizes (the
    norm weights), and gradients and optimizer steps split into as many pieces."""
    import re

    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from transformers import AutoModelForCausalLM

    from kakugo.models import granite_config

    def layout(model, persistence: int, bucket: int, sub_group: int):
        total = sum(p.numel() for p in model.parameters())
        resident = {re.sub(r"\.\d+\.", ".N.", name) for name, p in model.named_parameters()
                    if p.numel() < persistence}
        return resident, -(-total // bucket), -(-total // sub_group)

    config = zero3_overhead.small_granite(hidden_size=64, intermediate_size=128,
                                          shared_intermediate_size=128, vocab_size=512,
                                          num_hidden_layers=40)
    with torch.device("meta"):
        real = AutoModelForCausalLM.from_config(granite_config())
        small = AutoModelForCausalLM.from_config(config)
    defaults = DeepSpeedZeroConfig(stage=3)
    settings = zero3_overhead.zero_settings_at_scale(small)
    resident, buckets, sub_groups = layout(
        small, settings["stage3_param_persistence_threshold"],
        settings["reduce_bucket_size"], settings["sub_group_size"])
    assert resident and all(name.endswith("norm.weight") for name in resident)
    assert (resident, buckets, sub_groups) == layout(
        real, defaults.param_persistence_threshold, defaults.reduce_bucket_size,
        defaults.sub_group_size)
    assert buckets > 1 and sub_groups > 1
