"""``evsync version``: print the version."""

from __future__ import annotations

import argparse
from typing import Any

from evsync._version import __version__


def register(sub: Any) -> None:
    """Add the command to the parser."""
    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the version."""
    print(f"evsync {__version__}")
    return 0
