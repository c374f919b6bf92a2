"""Progress of long CLI work (dumps, downloads, uploads) on stderr, drawn by tqdm.

Shown only where someone watches it: stderr is a terminal, ``--quiet`` was not given,
and the command's own output is not being printed to that terminal (a bar between the
lines of ``dump`` would garble both). Otherwise nothing is written at all.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from tqdm import tqdm
from tqdm.utils import CallbackIOWrapper

# redraw at most this often: enough for a rate and an ETA, cheap for a million records
MIN_INTERVAL_SECONDS = 0.2
BYTE_SCALE = 1024
# a terminal that reports no size (a bare pty, a serial console) still gets a bar:
# tqdm draws nothing on a 0-column or 0-row terminal
DEFAULT_COLUMNS = 80
DEFAULT_ROWS = 24


def _size() -> tuple[int, int]:
    """Columns and rows of the terminal on stderr, with fallbacks for an unknown size."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return DEFAULT_COLUMNS, DEFAULT_ROWS
    return size.columns or DEFAULT_COLUMNS, size.lines or DEFAULT_ROWS


def enabled(*, quiet: bool, output_on_stdout: bool) -> bool:
    """Whether a progress bar may be drawn on stderr."""
    if quiet or not sys.stderr.isatty():
        return False
    return not (output_on_stdout and sys.stdout.isatty())


@contextmanager
def bar(
    description: str, total: int | None, unit: str, *, show: bool, bytes_: bool = False
) -> Iterator[Any]:
    """A bar counting ``unit`` up to ``total`` (None: unknown, no ETA); ``bytes_``
    shows KiB/MiB and their rates. A bar not shown costs one no-op call per update."""
    columns, rows = _size() if show else (None, None)
    with tqdm(
        total=total,
        desc=description,
        unit="B" if bytes_ else unit,
        unit_scale=bytes_,
        unit_divisor=BYTE_SCALE,
        file=sys.stderr,
        disable=not show,
        mininterval=MIN_INTERVAL_SECONDS,
        leave=False,
        ncols=columns,
        nrows=rows,
    ) as progress:
        yield progress


def counting_reader(stream: IO[bytes], progress: Any) -> IO[bytes]:
    """``stream`` with every read counted on ``progress``."""
    wrapped: IO[bytes] = CallbackIOWrapper(progress.update, stream, "read")
    return wrapped
