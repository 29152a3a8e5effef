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
