"""The configuration reference (docs/configuration.md), generated from the pydantic model.

    python -m kakugo.config_reference            # rewrite docs/configuration.md
    python -m kakugo.config_reference --check    # exit 1 if it is out of date

Every key of `RunConfig` gets a row: its dotted path, type and bounds, default (the
defaults of the section as a whole, e.g. `serving.students` scales to zero) and description.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from kakugo.config import RunConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
HEADER = """# Configuration reference

Generated from `kakugo/config.py` by `python -m kakugo.config_reference`; do not edit by
hand. A run config is a YAML file of these sections (`configs/paper.yaml` is the paper's
run, `configs/improved.yaml` the paper's with our checks dropping, `configs/tiny-cpu.yaml`
the embedded CPU demo); a file may start from another with `extends: OTHER.yaml`; any key
can be overridden on the command line with `--set section.key=value` (the value is read as
YAML). Unknown keys, wrong types and values out of bounds are refused when the config is
loaded, naming the key.
"""
MAX_DEFAULT_CHARS = 90
BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def type_name(annotation: Any) -> str:
    """A readable type: `int`, `'cpu' or 'gpu'`, `list of str`, `int or null`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " or ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"map of {type_name(args[0])} to {type_name(args[1])}"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def bounds(field: Any) -> str:
    """`>= 1`, `> 0, <= 1`, `matches ^...$` from the field's constraints."""
    out = []
    for item in field.metadata:
        for attr, sign in BOUNDS:
            if getattr(item, attr, None) is not None:
                out.append(f"{sign} {getattr(item, attr)}")
        if getattr(item, "pattern", None):
            out.append(f"matches `{item.pattern}`")
    return ", ".join(out)


def default_text(value: Any) -> str:
    text = json.dumps(value.model_dump(mode="json") if isinstance(value, BaseModel) else value,
                      ensure_ascii=False)
    if len(text) > MAX_DEFAULT_CHARS:
        size = f"{len(value)} items" if isinstance(value, (list, dict)) else f"{len(text)} chars"
        text = text[:MAX_DEFAULT_CHARS].rstrip() + f"… ({size})"
    return f"`{text}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def sections(model: BaseModel, path: str = "") -> list[tuple[str, BaseModel]]:
    """(dotted path, default instance) of the model and every nested section, in order."""
    out = [(path, model)]
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out.extend(sections(value, f"{path}.{name}" if path else name))
    return out


def undocumented() -> list[str]:
    """Keys without a description (the reference test requires none)."""
    return [f"{path}.{name}" if path else name
            for path, model in sections(RunConfig())
            for name, field in type(model).model_fields.items()
            if not isinstance(getattr(model, name), BaseModel) and not field.description]


def render() -> str:
    parts = [HEADER]
    for path, model in sections(RunConfig()):
        cls = type(model)
        rows = [(name, field) for name, field in cls.model_fields.items()
                if not isinstance(getattr(model, name), BaseModel)]
        if not rows:
            continue
        title = path or "top level"
        parts.append(f"\n## {title}\n")
        doc = (cls.__doc__ or "").strip()
        if doc and cls is not RunConfig:
            parts.append(" ".join(doc.split()) + "\n")
        parts.append("\n| key | type | default | description |\n|---|---|---|---|\n")
        for name, field in rows:
            kind = type_name(field.annotation)
            limit = bounds(field)
            key = f"{path}.{name}" if path else name
            parts.append(f"| `{key}` | {cell(kind + (f', {limit}' if limit else ''))} | "
                         f"{cell(default_text(getattr(model, name)))} | "
                         f"{cell(field.description or '')} |\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is out of date: run python -m kakugo.config_reference",
                  file=sys.stderr)
            return 1
        return 0
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
