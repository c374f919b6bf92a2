"""Secrets never leave the process: the config as plain data with every secret masked."""

from __future__ import annotations

from typing import Any

# keys whose values are secrets, wherever they appear in the config
SECRET_KEYS = frozenset({"secret_key", "access_key", "password"})
MASK = "***"


def mask(data: Any) -> Any:
    """``data`` (dicts, lists, scalars) with every set secret replaced by ``***``."""
    if isinstance(data, dict):
        return {k: (MASK if k in SECRET_KEYS and v else mask(v)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [mask(v) for v in data]
    return data
