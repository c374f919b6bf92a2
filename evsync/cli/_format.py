"""Shared printing helpers for the inspection commands."""

from __future__ import annotations

import time


def show_bytes(data: bytes, limit: int = 200) -> str:
    """Printable ASCII as is, other bytes as \\xNN; long values are cut."""
    out = []
    for b in data[:limit]:
        ch = chr(b)
        out.append(ch if 32 <= b < 127 and ch != "\\" else f"\\x{b:02x}")
    text = "".join(out)
    return text + (f"...(+{len(data) - limit} bytes)" if len(data) > limit else "")


def show_time(ts_ns: int) -> str:
    """A header timestamp as UTC with nanoseconds."""
    secs, nanos = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{nanos:09d}Z"
