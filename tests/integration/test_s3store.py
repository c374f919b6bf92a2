"""The S3 backend against a real S3 server: small objects in one PutObject, big ones in parts."""

from __future__ import annotations

import hashlib
import io
import os

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

    def test_a_small_object_is_one_put_of_the_bytes_after_the_position(
        self, aws: AwsServer, bucket: str
    ) -> None:
        """A delta-sized body whose first bytes were read already is stored as one
        PutObject (its ETag is the MD5 of what is stored, no part count) holding exactly
        the bytes after the position, and reads back the same."""
        data = os.urandom(700)
        body = io.BytesIO(data)
        body.read(SKIP)
        store = s3_store(aws, bucket)
        try:
            store.store(NAME, body)
            with store.fetch(NAME) as f:
                assert f.read() == data[SKIP:]
        finally:
            store.close()
        assert etag(aws, bucket) == hashlib.md5(data[SKIP:]).hexdigest()

    def test_an_object_past_the_single_put_size_goes_up_in_parts(
        self, aws: AwsServer, bucket: str
    ) -> None:
        """A body bigger than SINGLE_PUT_MAX_BYTES goes through the multipart upload
        (its ETag names the parts) and reads back whole from the position on."""
        data = os.urandom(SINGLE_PUT_MAX_BYTES + (1 << 20) + SKIP)
        body = io.BytesIO(data)
        body.read(SKIP)
        store = s3_store(aws, bucket)
        try:
            store.store(NAME, body)
            with store.fetch(NAME) as f:
                assert f.read() == data[SKIP:]
        finally:
            store.close()
        assert "-" in etag(aws, bucket)
