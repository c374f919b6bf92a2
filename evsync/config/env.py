"""``${ENV}`` references in config values, expanded after the YAML is parsed."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from evsync.errors import ConfigError


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; ``$$`` is a literal ``$``.

    An unset variable without a default is an error rather than an empty string,
    so a missing secret fails loudly at load instead of as an auth error later.
    """
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(3)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"config: environment variable {name} is not set (used as ${{{name}}})")

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", substitute, text)


class EnvText(str):
    """A string that came out of ``${ENV}`` expansion.

    It stays the string it is: a password ``0777``, a time ``12:30`` or a ``yes`` is
    never read again as YAML (which would make them 511, 750 and true). A key that takes
    a boolean or a number reads such a value in that type's plain spelling (``true``,
    ``7``, ``0.5``), so ``create: ${CREATE}`` works as in the file itself.
    """

    __slots__ = ()


def expand_tree(data: Any) -> Any:
    """Expand ``${ENV}`` in every string of parsed YAML (so comments are left alone);
    an expanded string is an :class:`EnvText`."""
    if isinstance(data, dict):
        return {k: expand_tree(v) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_tree(v) for v in data]
    if isinstance(data, str) and "$" in data:
        return EnvText(expand_env(data))
    return data
