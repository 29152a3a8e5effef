"""The rows of an SFT set: chat messages (with the reasoning trace where the recipe keeps
it), the token budget of the token-limited variant, and the files they are written in."""

from __future__ import annotations

import json
from typing import Any

from kakugo.config import RunConfig

SFT_COLUMNS = ("id", "language", "category", "kind", "messages")
WRITE_BATCH_ROWS = 10_000  # rows per dataset file
REJECT_COLUMNS = ("id", "language", "category", "kind", "reject", "prompt", "response",
                  "turns")


def sft_messages(row: dict[str, Any], config: RunConfig,
                 trace: bool = True) -> list[dict[str, str]]:
    """The training conversation of a kept candidate (OpenAI chat format): generated rows
    think inside <think> tags first (`trace`) or give the answer only; translated rows are
    plain."""
    ds = config.dataset
    if row["kind"] == "translated":
        return [{"role": "system", "content": ds.concise_system_prompt},
                *json.loads(row["turns"])]
    if not trace:
        return [{"role": "system", "content": ds.concise_system_prompt},
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["response"]}]
    answer = f"<think>\n{row['reasoning']}\n</think>\n\n{row['response']}"
    return [{"role": "system", "content": ds.think_system_prompt},
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": answer}]


def has_trace(row: dict[str, Any]) -> bool:
    return row["kind"] == "generated"


def budget_plan(rows: list[tuple[str, int, int]], budget: int,
                seed: int) -> tuple[dict[str, bool], int]:
    """The token-limited variant's choice: ({row id: with its trace?}, tokens used) for
    rows given as (id, tokens as an answer only, tokens the trace adds). Rows are taken in
    a seeded order, first as answers while they fit in `budget`, then the same order again
    gets traces while they fit: target-language answer tokens before reasoning tokens.
    Rows not in the plan do not fit."""
    from kakugo.ids import fraction_of

    order = sorted(rows, key=lambda r: fraction_of(r[0], ("token_budget", seed)))
    plan: dict[str, bool] = {}
    used = 0
    for row_id, answer, _ in order:
        if used + answer <= budget:
            plan[row_id], used = False, used + answer
    for row_id, _, extra in order:
        if row_id in plan and extra and used + extra <= budget:
            plan[row_id], used = True, used + extra
    return plan, used


class TokenCounter:
    """Tokens of a training conversation's message contents (the student's tokenizer)."""

    def __init__(self, student_path: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(student_path)

    def __call__(self, conversations: list[list[dict[str, str]]]) -> list[int]:
        contents = [m["content"] for c in conversations for m in c]
        lengths = iter(len(ids) for ids in self.tokenizer(
            contents, add_special_tokens=False)["input_ids"]) if contents else iter(())
        return [sum(next(lengths) for _ in c) for c in conversations]
