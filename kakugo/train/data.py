"""SFT rows -> token ids with assistant-only labels -> packed training rows.

Tokenization renders the conversation with the student's chat template once and labels
exactly the characters each assistant message adds (its content and end-of-turn marker),
found by rendering the prefixes; tokens are mapped to characters through the fast
tokenizer's offsets, so no token boundary is guessed.

Packing concatenates samples into rows of at most `cutoff_len` tokens (as few rows as it
can find) with position ids restarting at 0 for every sample. `packed_attention` turns
those position ids into what the attention kernel needs so that packed samples never attend to each other: sequence
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
    """Pack tokenized samples into rows of <= cutoff_len tokens, fewest rows first.

    Minimum bin slack: each row takes the longest sample left, then the subset of the
    samples left whose lengths fill the rest of the row best (an exact subset sum over
    the lengths left, `_best_fill`). First-fit decreasing, the simpler rule, leaves each
    row short by up to the shortest sample's length (0.957 of the token slots filled
    against 0.99+ here on benchmarks/training.py's data).

    Each row has input_ids, labels, position_ids (restarting per sample) and the number
    of samples in it.
    """
    by_length: dict[int, list[dict[str, list[int]]]] = {}
    for sample in samples:
        by_length.setdefault(len(sample["input_ids"]), []).append(sample)
    while by_length:
        longest = max(by_length)
        group = [_take(by_length, longest)]
        for length in sorted(_best_fill({n: len(s) for n, s in by_length.items()},
                                        cutoff_len - longest), reverse=True):
            group.append(_take(by_length, length))
        yield {
            "input_ids": [t for s in group for t in s["input_ids"]],
            "labels": [t for s in group for t in s["labels"]],
            "position_ids": [p for s in group for p in range(len(s["input_ids"]))],
            "samples": len(group),
        }


def _take(by_length: dict[int, list], length: int) -> dict[str, list[int]]:
    """The first sample of `length` left (samples keep their input order)."""
    sample = by_length[length].pop(0)
    if not by_length[length]:
        del by_length[length]
    return sample


def _best_fill(counts: dict[int, int], room: int) -> list[int]:
    """Lengths (with repeats, at most `counts[length]` of each) whose sum is the largest
    that is <= room: a bounded subset sum over reachable totals, as a numpy bit row per
    added sample; stops as soon as the room can be filled exactly."""
    import numpy as np

    if room <= 0:
        return []
    reachable = np.zeros(room + 1, dtype=bool)
    reachable[0] = True
    # how each total was first reached: its length and how many of it were added
    via_length = np.zeros(room + 1, dtype=np.int64)
    via_copies = np.zeros(room + 1, dtype=np.int64)
    for length in sorted((n for n in counts if n <= room), reverse=True):
        before = reachable.copy()
        for copies in range(1, min(counts[length], room // length) + 1):
            shift = length * copies
            new = np.zeros(room + 1, dtype=bool)
            new[shift:] = before[:room + 1 - shift]
            new &= ~reachable
            via_length[new], via_copies[new] = length, copies
            reachable |= new
        if reachable[room]:
            break
    total = int(np.flatnonzero(reachable)[-1])
    chosen: list[int] = []
    while total:
        length, copies = int(via_length[total]), int(via_copies[total])
        chosen.extend([length] * copies)
        total -= length * copies
    return chosen


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
