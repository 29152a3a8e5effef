"""Separating a teacher's reasoning trace from its answer."""

from __future__ import annotations

import re

THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def split_reasoning(text: str, mode: str, reasoning: str | None = None) -> tuple[str, str]:
    """(reasoning, answer) for a completion.

    - `gpt_oss`: vLLM's reasoning parser has already split the analysis channel into
      `reasoning`; `text` is the final channel.
    - `think_tags`: the trace is inside <think>...</think> (an unclosed <think> means the
      whole completion is reasoning and there is no answer yet).
    - `none`: no reasoning.
    """
    if mode == "gpt_oss":
        return (reasoning or "").strip(), text.strip()
    if mode == "think_tags":
        traces = [m.strip() for m in THINK_RE.findall(text)]
        answer = THINK_RE.sub("", text)
        if "<think>" in answer:  # opened, never closed: all of it is reasoning
            head, _, tail = answer.partition("<think>")
            return "\n\n".join([*traces, tail.strip()]).strip(), head.strip()
        return "\n\n".join(traces).strip(), answer.strip()
    return "", text.strip()
