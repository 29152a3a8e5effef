"""Serving: one Ray Serve OpenAI-compatible app for the teacher and every student."""


class ServeConfigError(ValueError):
    """What to serve cannot be worked out from the config; the message says why."""
