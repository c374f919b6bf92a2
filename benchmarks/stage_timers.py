"""An evsync daemon with CPU timers on its receive path's stages (``scale.py --stage-timers``).

Run as ``python benchmarks/stage_timers.py -c CFG sync``: the stages of
``receive_path.STAGES`` are wrapped with ``time.thread_time`` timers (the syncer
thread's own CPU, to the ns). SIGUSR1 zeroes them (a measured phase begins); SIGUSR2,
and the exit, write their seconds and calls as JSON to
``$EVSYNC_STAGE_TIMERS/<pid>.json``.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import receive_path  # the sibling script, found through the path above

from evsync.cli import main as evsync_main

OUT_ENV = "EVSYNC_STAGE_TIMERS"


def main() -> int:
    """Install the timers, run the daemon, write the figures at exit."""
    timers = receive_path.StageTimers(clock=time.thread_time)
    timers.install()
    out = Path(os.environ[OUT_ENV]) / f"{os.getpid()}.json"

    def dump(*_args: object) -> None:
        out.write_text(json.dumps({"seconds": timers.seconds, "calls": timers.calls}))

    def reset(*_args: object) -> None:
        for label in timers.seconds:
            timers.seconds[label] = 0.0
            timers.calls[label] = 0

    signal.signal(signal.SIGUSR1, reset)
    signal.signal(signal.SIGUSR2, dump)
    atexit.register(dump)
    return int(evsync_main(sys.argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
