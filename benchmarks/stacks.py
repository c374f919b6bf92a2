"""Sum a py-spy collapsed-stack file per thread and per function, to see where CPU goes.

``benchmarks/scale.py --py-spy FILE`` samples a receiver's Python stacks through phase
(c) (``py-spy record --format raw --threads``: one ``frame;frame;... count`` line per
distinct stack, the thread first). This prints, as shares of all samples: each
thread's, then the functions with the most samples of their own (self) and in all
(inclusive: the function or anything it called), optionally for one thread only.

Run: ``.venv/bin/python benchmarks/stacks.py FILE [--thread NAME] [--top 30]``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# py-spy names a frame "function (file:line)"; the line number is dropped so that one
# function's samples add up
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")
DEFAULT_TOP = 30


def function_of(frame: str) -> str:
    """``func (path/to/mod.py:12)`` -> ``func (mod.py)``."""
    m = FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    return f"{m['func']} ({Path(m['file']).name})"


def read_stacks(path: Path) -> list[tuple[list[str], int]]:
    """The file's (frames, samples), root first; the thread is frames[0]."""
    stacks = []
    for line in path.read_text().splitlines():
        head, _, count = line.rpartition(" ")
        if not head or not count.isdigit():
            continue
        stacks.append((head.split(";"), int(count)))
    return stacks


def main(argv: list[str] | None = None) -> int:
    """Print the per-thread, self and inclusive tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("file", type=Path)
    p.add_argument("--thread", default=None, help="only threads whose name contains this")
    p.add_argument("--top", type=int, default=DEFAULT_TOP)
    args = p.parse_args(argv)
    stacks = read_stacks(args.file)
    total = sum(n for _f, n in stacks)
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        threads[frames[0]] += n
        if args.thread is not None and args.thread not in frames[0]:
            continue
        funcs = [function_of(f) for f in frames[1:]]
        if funcs:
            own[funcs[-1]] += n
        for func in set(funcs):
            inclusive[func] += n
    print(f"{total} samples")
    print("\nper thread:")
    for name, n in threads.most_common():
        print(f"  {n / total:6.1%}  {name}")
    for title, table in (("self", own), ("inclusive", inclusive)):
        print(f"\n{title}:")
        for name, n in table.most_common(args.top):
            print(f"  {n / total:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
