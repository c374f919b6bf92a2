"""Shared fixtures of the unit tests: real LMDB environments in tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from evsync.config import LmdbConfig, LmdbOptions
from evsync.lmdb.env import LmdbEnv

EnvFactory = Callable[..., LmdbEnv]


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[EnvFactory]:
    """Open native-schema LMDB environments under tmp_path; all are closed afterwards."""
    opened: list[LmdbEnv] = []

    def factory(name: str = "main", map_size: int = 16 << 20) -> LmdbEnv:
        cfg = LmdbConfig(
            name=name,
            path=str(tmp_path / name),
            schema_tracks_changes=True,
            options=LmdbOptions(create=True, map_size=map_size),
        )
        lenv = LmdbEnv(cfg)
        opened.append(lenv)
        return lenv

    yield factory
    for lenv in opened:
        lenv.close()
