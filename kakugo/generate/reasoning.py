"""Separating a teacher's reasoning trace from its answer."""

from __future__ import annotations

import re

THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
# One harmony message of a gpt-oss completion: header (role, channel, recipient,
# constraint) up to <|message|>, then content up to <|end|>, <|return|>, <|call|> or the end.
HARMONY_RE = re.compile(
    r"(?:<\|start\|>[^<]*)?<\|channel\|>(?P<channel>\w+)[^<]*(?:<\|constrain\|>[^<]*)?"
    r"<\|message\|>(?P<content>.*?)(?=<\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>|$)",
    re.DOTALL,
)


def split_harmony(text: str) -> tuple[str, str]:
    """(analysis, final) from a gpt-oss completion decoded with its special tokens.

    vLLM's gpt-oss reasoning parser only marks where reasoning ends, so the channels are
    read here from the text (the engine is asked not to skip special tokens). A reply
    without channel markers (e.g. schema-constrained JSON) is all answer; a reply cut
    off before its final channel has no answer.
    """
    if "<|channel|>" not in text:
        return "", text.strip()
    analysis, final = [], []
    for match in HARMONY_RE.finditer(text):
        channel, content = match.group("channel"), match.group("content").strip()
        if channel == "analysis":
            analysis.append(content)
        elif channel == "final":
            final.append(content)
    return "\n\n".join(analysis).strip(), "\n\n".join(final).strip()


def split_reasoning(text: str, mode: str) -> tuple[str, str]:
    """(reasoning, answer) for a completion.

    - `gpt_oss`: harmony channels: analysis is the reasoning, final is the answer.
    - `think_tags`: the trace is inside <think>...</think> (an unclosed <think> means the
      whole completion is reasoning and there is no answer yet).
    - `none`: no reasoning.
    """
    if mode == "gpt_oss":
        return split_harmony(text)
    if mode == "think_tags":
        traces = [m.strip() for m in THINK_RE.findall(text)]
        answer = THINK_RE.sub("", text)
        if "<think>" in answer:  # opened, never closed: all of it is reasoning
            head, _, tail = answer.partition("<think>")
            return "\n\n".join([*traces, tail.strip()]).strip(), head.strip()
        return "\n\n".join(traces).strip(), answer.strip()
    return "", text.strip()
