"""Functions the task YAMLs name with `!function utils.NAME`."""

from kakugo.evaluate.metrics import answers, chrfpp, corpus_chrfpp

__all__ = ["answers", "chrfpp", "corpus_chrfpp"]
