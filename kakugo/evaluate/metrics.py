"""What the task YAMLs name with `!function utils.NAME`: chrF++ as FLORES is scored
(corpus-level chrF with word n-grams of order 2, sacrebleu), and the answer of a reply
that may open with a reasoning block (a student trained on the paper's rows thinks inside
<think> tags first)."""

from __future__ import annotations

import re

THINK_BLOCK_RE = re.compile(r"<think>.*?</think>", re.DOTALL)


def answer_of(reply: str) -> str:
    """The first non-empty line of a reply once its reasoning blocks are removed; "" when
    a block was opened and never closed (the reply ran out while reasoning)."""
    text = THINK_BLOCK_RE.sub("", reply)
    if "<think>" in text:
        text = text.partition("<think>")[0]
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def answers(resps: list[list[str]], docs) -> list[list[str]]:
    """lm-eval filter function: `answer_of` every reply of every document."""
    return [[answer_of(reply) for reply in replies] for replies in resps]


def chrfpp(references, predictions):
    """Per document: the (reference, prediction) pair, aggregated by `corpus_chrfpp`."""
    return references[0], predictions[0]


def corpus_chrfpp(items) -> float:
    from sacrebleu.metrics import CHRF

    refs, preds = zip(*items, strict=True)
    return CHRF(word_order=2).corpus_score(list(preds), [list(refs)]).score
