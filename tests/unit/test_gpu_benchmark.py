"""The GPU benchmark's profile arithmetic (the benchmark itself runs on a GPU machine)."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "gpu_train", Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_train.py")
gpu_train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_train)


def test_busy_time_counts_overlapping_kernels_once():
    # microseconds: two streams overlap in 150..200, a gap 300..400, one kernel inside another
    kernels = [(100, 200), (150, 300), (400, 500), (420, 450)]
    assert gpu_train.union_seconds(kernels) == pytest.approx(300e-6)
    assert gpu_train.union_seconds(list(reversed(kernels))) == pytest.approx(300e-6)
    assert gpu_train.union_seconds([]) == 0.0


def test_idle_gaps_are_charged_to_the_code_that_launched_the_next_kernel():
    """A real host profile (with Python stacks) and device activities linked to its ops, as
    a GPU profile links kernels to the ops that launched them."""
    import torch
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    from kakugo.train.data import packed_attention

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                with_stack=True) as prof:
        packed_attention(torch.tensor([[0, 1, 2, 0, 1]]), torch.float32, "torch_varlen")
    host = list(prof.events())
    nonzero = next(e for e in host if e.name == "aten::nonzero")
    other = next(e for e in host if e.id > 0 and e.id != nonzero.id)

    def kernel(start, end, op):
        return FunctionEvent(id=0, name="kernel", thread=0, start_us=start, end_us=end,
                             device_type=DeviceType.CUDA, linked_correlation_id=op.id)

    # microseconds: busy 0..150 (two streams), idle 150..400, a 10 us gap (not idle), then
    # an unlinked activity after 100 us idle
    device = [kernel(0, 100, other), kernel(50, 150, other), kernel(400, 500, nonzero),
              kernel(510, 600, other), kernel(700, 800, nonzero)]
    device[-1].linked_correlation_id = 10**9
    result = gpu_train.idle_sites(host + device)
    assert result["idle_seconds"] == pytest.approx(350e-6)
    assert result["gaps"] == 2
    first, second = result["sites"]
    assert first["seconds"] == pytest.approx(250e-6) and first["gaps"] == 1
    site = first["site"].split(" < ")
    assert site[0] == "aten::nonzero"
    assert "kakugo/train/data.py" in site[1] and site[1].endswith(": packed_attention")
    assert second["site"] == "kernel (launch not found)"
    assert gpu_train.idle_sites(host) == {"idle_seconds": 0.0, "gaps": 0, "sites": []}


def test_a_backward_op_is_named_with_its_autograd_node():
    import torch

    weight = torch.randn(4, 4, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                with_stack=True) as prof:
        (weight @ weight).sum().backward()
    sites = {gpu_train.launch_site(e) for e in prof.events() if e.name == "aten::mm"}
    assert any(site.startswith("aten::mm < autograd::engine::evaluate_function: MmBackward")
               for site in sites), sites
