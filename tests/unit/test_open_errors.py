"""One-line errors for an LMDB that cannot be opened: evsync's own and the writer tool's."""

from __future__ import annotations

from pathlib import Path

import pytest

from evsync.config import LmdbConfig, LmdbOptions
from evsync.errors import LmdbError
from evsync.lmdb.env import LmdbEnv
from evsync.tools import lmdb_write


def config(path: Path, *, create: bool) -> LmdbConfig:
    return LmdbConfig(
        name="main",
        path=str(path),
        schema_tracks_changes=True,
        options=LmdbOptions(create=create, map_size=16 << 20),
    )


class TestMissingLmdb:
    """A missing LMDB is named with the hint that fits how it was opened."""

    def test_read_only_open_does_not_suggest_create(self, tmp_path: Path) -> None:
        """A read-only command (dump) on a missing LMDB whose config already says
        create: true is told that it does not create it, not to set create."""
        missing = tmp_path / "nope"
        with pytest.raises(LmdbError) as err:
            LmdbEnv(config(missing, create=True), readonly=True)
        assert str(err.value) == (
            f"lmdbs.main.path: {missing} does not exist "
            "(a read-only command does not create it; run `evsync sync` first)"
        )
        assert not missing.exists()

    def test_without_create_the_hint_is_to_set_it(self, tmp_path: Path) -> None:
        """With create: false, the error says which option creates it."""
        missing = tmp_path / "nope"
        with pytest.raises(LmdbError, match=r"\(set options.create: true to create it\)$"):
            LmdbEnv(config(missing, create=False))


class TestWriterTool:
    """python -m evsync.tools.lmdb_write, the README's stand-in for an application."""

    def test_unopenable_path_is_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A path whose parent does not exist gives exit 1 and one line naming the path,
        not a traceback (and nothing is created)."""
        path = tmp_path / "no-such-dir" / "main"
        assert lmdb_write.main([str(path), "get", "records", "k"]) == 1
        out = capsys.readouterr()
        assert out.out == ""
        assert out.err.splitlines() == [f"lmdb_write: no LMDB at {path}"]
        assert not path.parent.exists()
