"""SFT rows -> token ids with assistant-only labels -> packed training rows.

Tokenization renders the conversation with the student's chat template once and labels
exactly the characters each assistant message adds (its content and end-of-turn marker),
found by rendering the prefixes; tokens are mapped to characters through the fast
tokenizer's offsets, so no token boundary is guessed.

Packing concatenates samples into rows of at most `cutoff_len` tokens with position ids
restarting at 0 for every sample. `packed_attention` turns those position ids into what
the attention kernel needs so that packed samples never attend to each other: sequence
boundaries (cu_seq_lens) for the varlen kernels on GPU (`flash_attention_2`, or
`torch_varlen` from kakugo.train.attention), else a block-diagonal
causal 4D mask (not every model derives one from position ids: GraniteMoeHybrid does
not). The first token of a sample is never a label, so no loss term crosses a boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

IGNORE_INDEX = -100


class TemplateError(ValueError):
    """The chat template does not render conversations prefix by prefix."""


def tokenize_conversation(messages: list[dict[str, str]], tokenizer,
                          cutoff_len: int) -> dict[str, list[int]] | None:
    """{"input_ids", "labels"} with labels only on assistant tokens; None if nothing is
    left to learn after truncation to `cutoff_len`."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False,
                                               add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(through) or not through.startswith(before):
            raise TemplateError(
                f"the chat template does not render message {i} as a prefix of the whole "
                "conversation; assistant tokens cannot be located")
        spans.append((len(before), len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                        truncation=True, max_length=cutoff_len)
    ids = encoded["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        if position > 0 and any(s <= start and end <= e for s, e in spans):
            labels[position] = ids[position]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def pack(samples: Iterable[dict[str, list[int]]], cutoff_len: int) -> Iterator[dict[str, Any]]:
    """First-fit-decreasing packing of tokenized samples into rows of <= cutoff_len tokens.

    Each row has input_ids, labels, position_ids (restarting per sample) and the number
    of samples in it.
    """
    bins: list[list[dict[str, list[int]]]] = []
    room: list[int] = []
    for sample in sorted(samples, key=lambda s: len(s["input_ids"]), reverse=True):
        size = len(sample["input_ids"])
        slot = next((i for i, free in enumerate(room) if free >= size), None)
        if slot is None:
            bins.append([sample])
            room.append(cutoff_len - size)
        else:
            bins[slot].append(sample)
            room[slot] -= size
    for group in bins:
        yield {
            "input_ids": [t for s in group for t in s["input_ids"]],
            "labels": [t for s in group for t in s["labels"]],
            "position_ids": [p for s in group for p in range(len(s["input_ids"]))],
            "samples": len(group),
        }


def packing_efficiency(tokens: int, rows: int, cutoff_len: int) -> float:
    """Share of the packed rows' token slots (rows x cutoff_len) holding real tokens."""
    return tokens / (rows * cutoff_len) if rows else 0.0


def collate(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Pad a micro-batch of packed rows to its longest row (pads are never labels)."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)

    def padded(key: str, fill: int) -> torch.Tensor:
        return torch.tensor([list(r[key]) + [fill] * (width - len(r[key])) for r in rows])

    return {"input_ids": padded("input_ids", pad_id), "labels": padded("labels", IGNORE_INDEX),
            "position_ids": padded("position_ids", 0)}


def is_varlen(implementation: str) -> bool:
    """Kernels that take sample boundaries (cu_seq_lens) over one flattened row."""
    return implementation.startswith("flash_attention") or implementation == "torch_varlen"


def packed_attention(position_ids, dtype, implementation: str) -> dict[str, Any]:
    """Model kwargs that keep the packed samples of each row apart (see module doc).

    For the varlen kernels the batch must be flattened to one row (`model_inputs` does).
    """
    import torch

    if is_varlen(implementation):
        flat = position_ids.reshape(-1)
        starts = (flat == 0).nonzero().reshape(-1)
        bounds = torch.cat([starts, torch.tensor([flat.numel()], device=flat.device)])
        lengths = bounds[1:] - bounds[:-1]
        cu = bounds.to(torch.int32)
        longest = int(lengths.max())
        return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest,
                "max_length_k": longest}
    segment = (position_ids == 0).cumsum(-1)
    width = position_ids.shape[-1]
    causal = torch.ones(width, width, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return {"attention_mask": mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]}


def model_inputs(batch: dict[str, Any], dtype, implementation: str,
                 device=None) -> dict[str, Any]:
    """Forward kwargs for a collated micro-batch of packed rows (flattened for varlen), on
    `device` (None: where the batch is). The sample boundaries of the varlen kernels are
    found from the host's copy (on a GPU that would make the host wait for it); the
    block mask of the others is built on the device (it is large)."""
    if is_varlen(implementation):
        batch = {k: v.reshape(1, -1) for k, v in batch.items()}
        return to_device({**batch, **packed_attention(batch["position_ids"], dtype,
                                                      implementation)}, device)
    batch = to_device(batch, device)
    return {**batch, **packed_attention(batch["position_ids"], dtype, implementation)}


def to_device(inputs: dict[str, Any], device) -> dict[str, Any]:
    """Move the tensors among `inputs` to `device` (None: leave them). To a GPU through
    pinned memory and without blocking: a plain host-to-GPU copy makes the host wait until
    the GPU has run everything queued before it, so the GPU idles while the host issues
    the next step."""
    import torch

    if device is None:
        return inputs
    gpu = torch.device(device).type == "cuda"
    return {k: (v.pin_memory() if gpu else v).to(device, non_blocking=gpu)
            if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
