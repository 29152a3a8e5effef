"""Our prompt templates (one Jinja file per teacher call type) and their JSON schemas."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).resolve().parent


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )


def render(name: str, **variables: Any) -> str:
    """Render `{name}.txt`; a missing variable is an error, not an empty string."""
    return _environment().get_template(f"{name}.txt").render(**variables).strip()


def list_schema(n: int, max_chars: int) -> dict[str, Any]:
    """JSON schema of the reply to a list call: {"items": [exactly n non-empty strings]}.

    `max_chars` bounds each string, so a small model cannot run one item on forever.
    """
    return {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": max_chars},
                "minItems": n,
                "maxItems": n,
            }
        },
        "required": ["items"],
        "additionalProperties": False,
    }
