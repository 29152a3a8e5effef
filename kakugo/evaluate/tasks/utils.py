"""Metric functions the task YAMLs name with `!function utils.NAME`."""

from kakugo.evaluate.metrics import chrfpp, corpus_chrfpp

__all__ = ["chrfpp", "corpus_chrfpp"]
