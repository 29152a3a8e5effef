"""Separating a teacher's reasoning trace from its answer, for teachers served without a
vLLM reasoning parser (`teacher.reasoning: think_tags`). With a parser (gpt_oss,
deepseek_r1, qwen3: see kakugo.teacher.REASONING_PARSERS) vLLM has already split the
reply: the trace is in the message's `reasoning` field."""

from __future__ import annotations

import re

THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def split_think_tags(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a reply that thinks inside <think>...</think> (an unclosed
    <think> means the rest of the reply is reasoning and there is no answer yet)."""
    traces = [m.strip() for m in THINK_RE.findall(text)]
    answer = THINK_RE.sub("", text)
    if "<think>" in answer:  # opened, never closed: all of it is reasoning
        head, _, tail = answer.partition("<think>")
        return "\n\n".join([*traces, tail.strip()]).strip(), head.strip()
    return "\n\n".join(traces).strip(), answer.strip()
