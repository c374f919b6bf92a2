"""Fixtures for integration tests: an S3/SQS/SNS server over HTTP, Mosquitto, evsync processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    EXTERNAL_ENDPOINT_VAR,
    AwsServer,
    ExternalAws,
    Instance,
    Mosquitto,
    MotoServer,
)


@pytest.fixture(scope="session")
def aws() -> Iterator[AwsServer]:
    """The S3/SQS/SNS server for the session: moto's server, started here, or the
    LocalStack named by $EVSYNC_TEST_AWS_ENDPOINT (`make test-localstack`).
    Each test gets its own bucket and queues."""
    external = os.environ.get(EXTERNAL_ENDPOINT_VAR)
    if external:
        yield ExternalAws(external)
        return
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(aws: AwsServer) -> str:
    """A fresh, empty bucket."""
    name = f"evs-{uuid.uuid4().hex[:12]}"
    aws.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_storage(aws: AwsServer, bucket: str) -> dict[str, Any]:
    """The storage section pointing evsync at the test bucket."""
    return {
        "type": "s3",
        "options": {
            "bucket": bucket,
            "endpoint_url": aws.endpoint,
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
