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
