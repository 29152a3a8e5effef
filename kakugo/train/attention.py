"""`torch_varlen`: packed-sequence attention through PyTorch's own flash varlen kernel.

Packed rows need attention that stops at sample boundaries. The `sdpa` path does it with a
materialised block-diagonal mask, which rules out the flash kernel (the figures are in
docs/benchmarks.md, gpu_train). `flash_attention_2` needs the
flash-attn package. This implementation needs neither: it calls
`torch.nn.attention.varlen.varlen_attn` (CUDA only) with the cu_seq_lens that
`kakugo.train.data.packed_attention` computes, and is registered with transformers'
attention interfaces under `TORCH_VARLEN`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

TORCH_VARLEN = "torch_varlen"


@functools.cache
def _varlen_parameters() -> frozenset[str]:
    """The keyword arguments this torch's varlen_attn takes (read once, not per layer call)."""
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None,
                             dropout: float = 0.0, **kwargs: Any):
    """transformers attention function: (B=1, H, T, D) inputs -> ((1, T, H, D), None)."""
    import torch
    from torch.nn.attention.varlen import varlen_attn

    if query.shape[0] != 1:
        raise ValueError(f"{TORCH_VARLEN} takes one flattened row, got batch {query.shape[0]}")
    if dropout:
        raise ValueError(f"{TORCH_VARLEN} has no attention dropout (got {dropout})")
    cu_q, cu_k = kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"]
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D)
    if q.dtype == torch.float32 and torch.is_autocast_enabled(q.device.type):
        # fp32 weights under autocast: rotary embeddings leave q and k in fp32, and the
        # flash kernel (a custom op, outside autocast's cast lists) takes only bf16/fp16.
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    parameters = _varlen_parameters()
    options: dict[str, Any] = {"scale": scaling}
    if "window_size" in parameters:
        options["window_size"] = (-1, 0)  # causal
    else:
        options["is_causal"] = True
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in parameters:
            options["enable_gqa"] = True
        else:
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    out = varlen_attn(q, k, v, cu_q, cu_k, int(kwargs["max_length_q"]),
                      int(kwargs["max_length_k"]), **options)
    return out.unsqueeze(0), None


def register() -> None:
    """Make `attn_implementation="torch_varlen"` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(TORCH_VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(TORCH_VARLEN, flash_attention_mask)
