"""Stable row ids and the deterministic fractions every sampling decision draws from (a
row's id and a salt give the same number on every run, machine and worker)."""

from __future__ import annotations

import hashlib


def stable_id(*parts: object) -> str:
    blob = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def fraction_of(key: str, salt: object) -> float:
    """A deterministic number in [0, 1) for a row: used for sampling decisions."""
    return int(stable_id("u", salt, key)[:12], 16) / 16**12
