"""Config values that are more than YAML scalars: durations, sizes, names and DBI flags."""

from __future__ import annotations

import re

from evsync.errors import ConfigError

# both are parts of object names, which are split on '__' and must not hold '/'
INSTANCE_RE = re.compile(r"^[a-zA-Z0-9-]+$")
DB_NAME_RE = re.compile(r"^[a-z0-9-]+$")


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


# Go's time.Duration ends at 2562047h (about 292 years); beyond it Python's waits overflow too.
MAX_DURATION = 2562047 * 3600.0


def parse_duration(value: object, key: str) -> float:
    """Parse a Go-style duration (``500ms``, ``1h30m``, ``168h``) into seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like 500ms, 1s, 5m, got {value!r}")
    if isinstance(value, int | float) and value == 0:
        return 0.0
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a duration like 500ms, 1s, 5m, got {value!r}")
    text = value.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ConfigError(f"{key}: expected a duration like 500ms, 1s, 5m, got {value!r}")
    if total > MAX_DURATION:
        raise ConfigError(f"{key}: must be at most 2562047h, got {value}")
    return total


def parse_size(value: object, key: str) -> int:
    """Parse a size (``256MB``, ``1GB``, bytes as an integer); units are powers of 1024."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size like 256MB or 1GB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            unit = (match.group(2) or "").upper().replace("I", "").rstrip("B") or ""
            if unit in _SIZE_UNITS:
                return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise ConfigError(f"{key}: expected a size like 256MB or 1GB, got {value!r}")


def sanitize_instance(name: str) -> str:
    """LS's rule for a default instance name: anything outside [a-zA-Z0-9-] becomes '-'."""
    return re.sub(r"[^a-zA-Z0-9-]", "-", name)


def validate_instance(name: str, key: str = "instance") -> str:
    """Check an instance name: it is part of object names split on '__'."""
    if not name:
        raise ConfigError(f"{key}: missing")
    if not INSTANCE_RE.match(name):
        raise ConfigError(
            f"{key}: {name!r} may only hold letters, digits and '-' (no '_', '/' or spaces)"
        )
    return name


def validate_db_name(name: str, key: str) -> str:
    """Check a db name: lowercase, digits and '-' so object names parse."""
    if not DB_NAME_RE.match(name):
        raise ConfigError(
            f"{key}: db name {name!r} may only hold lowercase letters, digits and '-'"
        )
    return name


_DBI_FLAG_NAMES = {
    "REVERSEKEY": 0x02,
    "DUPSORT": 0x04,
    "INTEGERKEY": 0x08,
    "DUPFIXED": 0x10,
    "INTEGERDUP": 0x20,
    "REVERSEDUP": 0x40,
}


def parse_dbi_flags(value: object, key: str) -> int:
    """Parse LS's flag syntax: names joined by | , + or space, or a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        flags = value
    elif isinstance(value, str):
        flags = 0
        for part in re.split(r"[|,+\s]+", value.strip()):
            if not part:
                continue
            name = part.upper().removeprefix("MDB_")
            if name in _DBI_FLAG_NAMES:
                flags |= _DBI_FLAG_NAMES[name]
            else:
                try:
                    flags |= int(part, 0)
                except ValueError:
                    raise ConfigError(f"{key}: unknown DBI flag {part!r}") from None
    else:
        raise ConfigError(f"{key}: expected flag names like MDB_DUPSORT|MDB_DUPFIXED")
    if flags & ~sum(_DBI_FLAG_NAMES.values()):
        raise ConfigError(f"{key}: only persistent DBI flags are allowed, got {flags:#x}")
    return flags
