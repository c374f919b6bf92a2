"""The crash points of evsync.faults: parsed strictly, off by default, deadly when asked."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

import pytest

from evsync import faults
from evsync.errors import ConfigError


class TestParseFaults:
    """EVSYNC_FAULTS is parsed strictly, so a typo never silently disables a fault run."""

    def test_points_and_rates(self) -> None:
        """Each <point>=<rate> pair becomes a rate; blanks are ignored."""
        assert faults.parse_faults(" upload=0.5, merge=1 ,") == {"upload": 0.5, "merge": 1.0}

    @pytest.mark.parametrize("spec", ["uplaod=0.1", "merge", "merge=2", "merge=x", "merge=-1"])
    def test_bad_specs_are_errors(self, spec: str) -> None:
        """An unknown point, a missing rate or a rate outside 0..1 is a ConfigError."""
        with pytest.raises(ConfigError, match="EVSYNC_FAULTS"):
            faults.parse_faults(spec)


class TestPoints:
    """Without EVSYNC_FAULTS nothing happens; with a rate of 1 the process dies there."""

    def test_off_by_default(self) -> None:
        """point() returns and reading() hands back the very same file."""
        faults.point("merge")
        data = io.BytesIO(b"x")
        assert faults.reading(data, "upload") is data

    def test_rate_one_kills_with_a_line(self) -> None:
        """A point at rate 1 ends the process by SIGKILL after saying where."""
        code = "from evsync import faults; faults.point('merge'); print('survived')"
        env = {**os.environ, "EVSYNC_FAULTS": "merge=1"}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=30, check=False)
        assert proc.returncode == -signal.SIGKILL
        assert proc.stderr == "evsync fault: SIGKILL at merge\n"
        assert "survived" not in proc.stdout

    def test_until_file_turns_points_off(self, tmp_path: os.PathLike[str]) -> None:
        """Once the EVSYNC_FAULTS_UNTIL file exists, a rate-1 point no longer kills."""
        off = os.path.join(tmp_path, "off")
        open(off, "w").close()
        code = ("from evsync import faults; import io; "
                "faults.reading(io.BytesIO(b'ab'), 'upload').read(); print('survived')")
        env = {**os.environ, "EVSYNC_FAULTS": "upload=1", "EVSYNC_FAULTS_UNTIL": off}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=30, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "survived\n"
