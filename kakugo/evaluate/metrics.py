"""chrF++ as FLORES is scored: corpus-level chrF with word n-grams of order 2 (sacrebleu)."""

from __future__ import annotations


def chrfpp(references, predictions):
    """Per document: the (reference, prediction) pair, aggregated by `corpus_chrfpp`."""
    return references[0], predictions[0]


def corpus_chrfpp(items) -> float:
    from sacrebleu.metrics import CHRF

    refs, preds = zip(*items, strict=True)
    return CHRF(word_order=2).corpus_score(list(preds), [list(refs)]).score
