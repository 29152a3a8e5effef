"""Serving: one Ray Serve OpenAI-compatible app for the teacher and every student."""

from kakugo.errors import ServeConfigError

__all__ = ["ServeConfigError"]
