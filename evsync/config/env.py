"""``${ENV}`` references in config values, expanded after the YAML is parsed."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

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


_WHOLE_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}$")


def expand_tree(data: Any) -> Any:
    """Expand ``${ENV}`` in every string of parsed YAML (so comments are left alone).

    A value that is a single reference, like ``create: ${CREATE}``, is read as YAML
    after expansion, so it can stand for a boolean or a number as in the file itself.
    """
    if isinstance(data, dict):
        return {k: expand_tree(v) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_tree(v) for v in data]
    if isinstance(data, str) and "$" in data:
        expanded = expand_env(data)
        if _WHOLE_REF.match(data.strip()):
            try:
                typed = yaml.safe_load(expanded)
            except yaml.YAMLError:
                return expanded
            if isinstance(typed, bool | int | float):
                return typed
        return expanded
    return data
