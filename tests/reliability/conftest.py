"""The integration fixtures (S3 over HTTP, Mosquitto, evsync processes), reused here."""

from __future__ import annotations

from tests.integration.conftest import (  # noqa: F401 - fixtures are found by name
    aws,
    bucket,
    instances,
    mosquitto,
    s3_storage,
    topic,
)
