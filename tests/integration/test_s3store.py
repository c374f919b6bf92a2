"""The S3 backend against a real S3 server: small objects in one PutObject, big ones in parts."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from evsync.config import S3Options
from evsync.storage.s3 import SINGLE_PUT_MAX_BYTES, S3Store
from tests.helpers import AwsServer

NAME = "main__a__20231114-221320-000000001__GX.evs.zst"
SKIP = 7  # stores read from the body's current position: these bytes are not stored


def s3_store(aws: AwsServer, bucket: str) -> S3Store:
    return S3Store(
        S3Options(
            bucket=bucket,
            endpoint_url=aws.endpoint,
            region="us-east-1",
            access_key="test",
            secret_key="test",
        )
    )


def etag(aws: AwsServer, bucket: str) -> str:
    return str(aws.client().head_object(Bucket=bucket, Key=NAME)["ETag"]).strip('"')


class TestStoreSizes:
    """S3Store.store: the upload kind follows the size, the stored bytes do not."""

    @pytest.mark.parametrize(
        ("size", "in_parts"), [(700, False), (SINGLE_PUT_MAX_BYTES + (1 << 20), True)]
    )
    def test_the_bytes_after_the_position_are_stored_in_one_put_or_in_parts(
        self, aws: AwsServer, bucket: str, size: int, in_parts: bool
    ) -> None:
        """A body whose first bytes were read already is stored holding exactly the
        bytes after the position, and reads back the same: a delta-sized one as one
        PutObject (its ETag is the MD5 of what is stored, no part count), one bigger
        than SINGLE_PUT_MAX_BYTES through the multipart upload (its ETag names parts)."""
        data = os.urandom(size + SKIP)
        body = io.BytesIO(data)
        body.read(SKIP)
        store = s3_store(aws, bucket)
        try:
            store.store(NAME, body)
            with store.fetch(NAME) as f:
                assert f.read() == data[SKIP:]
        finally:
            store.close()
        tag = etag(aws, bucket)
        if in_parts:
            assert "-" in tag
        else:
            assert tag == hashlib.md5(data[SKIP:]).hexdigest()
