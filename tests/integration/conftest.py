"""Fixtures for integration tests: a moto S3 server over HTTP, buckets, evsync processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Instance, Mosquitto, MotoServer


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """One moto S3 server for the session; each test gets its own bucket."""
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    """A fresh, empty bucket."""
    name = f"evs-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_storage(moto: MotoServer, bucket: str) -> dict[str, Any]:
    """The storage section pointing evsync at the test bucket."""
    return {
        "type": "s3",
        "options": {
            "bucket": bucket,
            "endpoint_url": moto.endpoint,
            "region": "us-east-1",
            "access_key": "test",
            "secret_key": "test",
        },
    }


@pytest.fixture
def instances(tmp_path: Path) -> Iterator[Callable[..., Instance]]:
    """Factory for evsync instances; every one is stopped at the end of the test."""
    made: list[Instance] = []

    def make(name: str, storage: dict[str, Any], **overrides: Any) -> Instance:
        inst = Instance(name, tmp_path, storage, **overrides)
        made.append(inst)
        return inst

    try:
        yield make
    finally:
        for inst in made:
            inst.close()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh broker for one test."""
    broker = Mosquitto(tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def topic() -> str:
    """A topic unique to the test."""
    return f"evsync-test-{uuid.uuid4().hex[:8]}"
