"""kakugo: distil a teacher LLM into a small student for a low-resource language, on Ray."""

__version__ = "0.1.0"
