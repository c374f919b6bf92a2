"""`make soak`: the convergence checker for as long as asked, with a summary at the end.

    python -m tests.reliability.soak --seconds 600 [--seed N] [--instances 3]

Prints the run's summary (operations, faults injected by kind, checks passed) and exits
1 if any check failed; the logs stay in the printed directory for a failed run.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

from tests.reliability.cluster import ChaosSettings, Cluster

DEFAULT_SOAK_SECONDS = 600.0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.reliability.soak")
    p.add_argument("--seconds", type=float,
                   default=float(os.environ.get("SOAK_SECONDS", DEFAULT_SOAK_SECONDS)))
    p.add_argument("--seed", type=int, default=random.randrange(1, 1_000_000))
    p.add_argument("--instances", type=int, default=3)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="evsync-soak-"))
    print(f"soak: seed {args.seed}, {args.seconds:.0f} s of faults, {args.instances} "
          f"instances, logs in {root}", flush=True)
    settings = ChaosSettings(seed=args.seed, seconds=args.seconds, instances=args.instances)
    with Cluster(root, settings) as cluster:
        summary = cluster.run()
    print(summary.render())
    if summary.failures:
        print(f"soak: logs kept in {root}; rerun with --seed {args.seed}")
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
