"""Two adjustments of DeepSpeed's ZeRO-3 optimizer, each for a measured cost of the stock
code (benchmarks/zero3_overhead.py, docs/benchmarks.md). Both reach into DeepSpeed's
private optimizer state: they were checked against DeepSpeed 0.19.8, and
tests/unit/test_train_deepspeed.py fails when a DeepSpeed release changes what they rely
on (the attribute names, the shared partitions, the norm against the stock one).
"""

from __future__ import annotations

CHECKED_WITH = "0.19"  # the DeepSpeed minor version these were checked against


def share_bf16_master_weights(zero3_optimizer) -> None:
    """Pure bf16 (`training.master_weights` bf16): DeepSpeed means the optimizer to update
    each sub-group's bf16 weight partition itself, but the check for it compares a
    torch.device with a device name, never equal (DeepSpeed 0.19), so it keeps a second
    bf16 copy (2 bytes a parameter) and copies it back after every step. Here each master
    copy of the weights' own dtype is made to share its partition's memory, as intended;
    torch then skips the copy back (same data). fp32 master copies are left alone."""
    flats = zip(zero3_optimizer.fp32_partitioned_groups_flat,
                zero3_optimizer.fp16_partitioned_groups_flat, strict=True)
    for master, weights in flats:
        if weights is not None and master.data_ptr() != weights.data_ptr() and \
                (master.dtype, master.device, master.shape) == \
                (weights.dtype, weights.device, weights.shape):
            master.data = weights.data


def fp32_grad_norm(zero3_optimizer) -> None:
    """DeepSpeed's ZeRO-3 step takes the gradient norm (for clipping) on fp64 copies of the
    gradient partitions: each step writes and reads 8 bytes a parameter besides reading the
    gradients (18 bytes a parameter in all, benchmarks/zero3_overhead.py). This optimizer
    takes it instead as torch's clip_grad_norm_ does: a multi-tensor kernel reads the
    gradients once and accumulates in fp32 (2 bytes a parameter for bf16 gradients). Only
    for the L2 norm over data-parallel ranks (no tensor- or expert-parallel groups); other
    calls go to DeepSpeed's own. A non-finite norm is -1, as there: the step is skipped."""
    import types

    import deepspeed.comm as dist
    import torch

    stock = zero3_optimizer.get_grad_norm_direct

    def get_grad_norm_direct(self, gradients, params, norm_type=2):
        if float(norm_type) != 2.0 or self.model_parallel_group is not None or \
                self._autoep_expert_parallel_group(params) is not None:
            return stock(gradients, params, norm_type)
        squares = torch.zeros((), dtype=torch.float32, device=self.device)
        if gradients:
            norms = torch._foreach_norm(list(gradients), 2, dtype=torch.float32)
            squares = torch.stack(norms).square().sum()
        dist.all_reduce(squares, op=dist.ReduceOp.SUM,
                        group=self._get_param_partition_group(params[0]))
        norm = squares.sqrt()
        return torch.where(norm.isfinite(), norm, torch.full_like(norm, -1.0))

    zero3_optimizer.get_grad_norm_direct = types.MethodType(get_grad_norm_direct,
                                                            zero3_optimizer)
