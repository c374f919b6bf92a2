"""The S3 backend (boto3): AWS, moto, LocalStack, MinIO, Ceph — anything speaking the S3 API."""

from __future__ import annotations

import io
import logging
import time
from typing import IO, Any

import boto3
import botocore.exceptions
from botocore.config import Config as BotoConfig

from evsync.config import S3Options
from evsync.errors import (
    ObjectNotFoundError,
    StorageConfigError,
    StorageError,
    StorageUnavailableError,
)
from evsync.snapshot.name import EXT_LIGHTNINGSTREAM
from evsync.storage.base import BlobStore, ObjectInfo

log = logging.getLogger(__name__)

# evsync retries with its own backoff (storage_retry_*); botocore's retries stay short
# so that an outage is noticed and reported quickly.
BOTO_MAX_ATTEMPTS = 2
LIST_PAGE_SIZE = 1000
# Objects up to this size (s3transfer's own multipart threshold) go up in one PutObject;
# s3transfer's machinery cost a small delta's store ~0.4 ms of CPU more than that.
SINGLE_PUT_MAX_BYTES = 8 * 1024 * 1024
# LS's S3 option use_update_marker (simpleblob backends/s3/marker.go): every store and
# delete rewrites this object, under the global prefix, with
# "<name>:<etag>:<unix ns>:<is delete>", and LS lists again only when it changed.
UPDATE_MARKER_NAME = "update-marker"
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_CONFIG_ERROR_CODES = frozenset(
    {
        "403",  # HeadBucket's bare "access denied"
        "Forbidden",
        "NoSuchBucket",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "InvalidBucketName",
    }
)


class S3Store(BlobStore):
    """Objects in an S3 bucket, optionally under a global prefix."""

    kind = "s3"

    def __init__(self, options: S3Options) -> None:
        self.options = options
        self.bucket = options.bucket
        self.prefix = options.global_prefix
        session_args: dict[str, Any] = {}
        if options.access_key and options.secret_key:
            session_args = {
                "aws_access_key_id": options.access_key,
                "aws_secret_access_key": options.secret_key,
            }
        self._client = boto3.session.Session(**session_args).client(
            "s3",
            endpoint_url=options.endpoint_url,
            region_name=options.region,
            config=BotoConfig(
                connect_timeout=options.dial_timeout,
                read_timeout=options.read_timeout,
                retries={"max_attempts": BOTO_MAX_ATTEMPTS, "mode": "standard"},
            ),
        )
        # With create_bucket, the bucket is made sure of before the first listing; an S3
        # that is down at start is retried like any listing, never a reason to exit.
        self._bucket_ready = not options.create_bucket
        if options.create_bucket:
            try:
                self._ensure_bucket()
            except StorageError as exc:
                log.warning("%s; trying again before each listing", exc)

    def _ensure_bucket(self) -> None:
        if not self._bucket_ready:
            self._create_bucket()
            self._bucket_ready = True

    def describe(self) -> str:
        where = self.options.endpoint_url or "aws"
        return f"s3://{self.bucket}/{self.prefix} at {where}"

    def _key(self, name: str) -> str:
        return self.prefix + name

    def _wrap(self, exc: Exception, action: str) -> StorageError:
        if isinstance(exc, botocore.exceptions.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            msg = f"s3: {action}: {code} {exc.response.get('Error', {}).get('Message', '')}".strip()
            if code in _NOT_FOUND_CODES:
                return ObjectNotFoundError(msg)
            if code == "NoSuchBucket":
                return StorageConfigError(
                    f"{msg} (bucket {self.bucket!r}: create it, e.g. `aws s3 mb "
                    f"s3://{self.bucket}`, or set storage.options.create_bucket: true)"
                )
            if code in _CONFIG_ERROR_CODES:
                return StorageConfigError(msg + f" (bucket {self.bucket!r})")
            return StorageUnavailableError(msg)
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return StorageUnavailableError(f"s3: {action}: {exc}")
        return StorageUnavailableError(f"s3: {action}: {type(exc).__name__}: {exc}")

    def _create_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except botocore.exceptions.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket"):
                raise self._wrap(exc, f"head bucket {self.bucket}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._wrap(exc, f"head bucket {self.bucket}") from None
        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.options.region and self.options.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.options.region}
        try:
            self._client.create_bucket(**args)
            log.info("created bucket %s", self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._wrap(exc, f"create bucket {self.bucket}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._wrap(exc, f"create bucket {self.bucket}") from None

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        self._ensure_bucket()
        out: list[ObjectInfo] = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=self._key(prefix),
                PaginationConfig={"PageSize": LIST_PAGE_SIZE},
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    name = key[len(self.prefix) :]
                    if "/" in name:
                        continue  # a "folder" below the prefix is not ours
                    out.append(ObjectInfo(name, int(obj.get("Size", 0))))
        except Exception as exc:  # noqa: BLE001 - every boto failure maps to a StorageError
            raise self._wrap(exc, f"list {prefix!r}") from None
        out.sort(key=lambda o: o.name)
        return out

    def open(self, name: str) -> IO[bytes]:
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:  # noqa: BLE001
            raise self._wrap(exc, f"get {name}") from None
        body: IO[bytes] = resp["Body"]
        return body

    def exists(self, name: str) -> bool:
        """A HEAD request."""
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:  # noqa: BLE001
            err = self._wrap(exc, f"head {name}")
            if isinstance(err, ObjectNotFoundError):
                return False
            raise err from None
        return True

    def fetch(self, name: str) -> IO[bytes]:
        try:
            return super().fetch(name)
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - a read error mid-body
            raise self._wrap(exc, f"get {name}") from None

    def store(self, name: str, data: IO[bytes]) -> None:
        try:
            body = _small_body(data)
            etag = None
            if body is not None:
                resp = self._client.put_object(Bucket=self.bucket, Key=self._key(name), Body=body)
                etag = _etag(resp)
            else:
                self._client.upload_fileobj(
                    _Unclosable(data),  # s3transfer closes the body on a failure; we retry
                    self.bucket,
                    self._key(name),
                    Config=boto3.s3.transfer.TransferConfig(use_threads=False),
                )
        except Exception as exc:  # noqa: BLE001
            inner = getattr(exc, "last_exception", None) or exc
            raise self._wrap(inner, f"put {name}") from None
        if self.options.use_update_marker and _ls_reads(name):
            self._update_marker(name, deleted=False, etag=etag)

    def delete(self, name: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:  # noqa: BLE001
            err = self._wrap(exc, f"delete {name}")
            if not isinstance(err, ObjectNotFoundError):
                raise err from None
        if self.options.use_update_marker and _ls_reads(name):
            self._update_marker(name, deleted=True)

    def _update_marker(self, name: str, *, deleted: bool, etag: str | None = None) -> None:
        """Tell LS readers that the bucket changed, as LS writers do; ``etag``: the stored
        object's, when its PUT answered it (else a HEAD asks). A marker that cannot be
        written is logged and left: the object is stored, and LS lists again within
        update_marker_force_list_interval anyway."""
        try:
            if deleted:
                etag = ""
            elif not etag:
                etag = _etag(self._client.head_object(Bucket=self.bucket, Key=self._key(name)))
            body = f"{name}:{etag}:{time.time_ns()}:{'true' if deleted else 'false'}"
            self._client.put_object(
                Bucket=self.bucket, Key=self._key(UPDATE_MARKER_NAME), Body=body.encode()
            )
        except Exception as exc:  # noqa: BLE001 - every boto failure is only logged here
            log.warning(
                "%s: cannot update %s after %s: %s; LS instances notice it at their next "
                "forced listing",
                self.describe(),
                UPDATE_MARKER_NAME,
                name,
                self._wrap(exc, "put update-marker"),
            )

    def close(self) -> None:
        self._client.close()


def _etag(response: dict[str, Any]) -> str:
    """A PutObject's or HeadObject's ETag, unquoted ("" when it has none)."""
    return str(response.get("ETag", "")).strip('"')


def _small_body(data: IO[bytes]) -> bytes | None:
    """What is left of ``data`` when it fits one PutObject (SINGLE_PUT_MAX_BYTES), else
    None (the position is then where it was)."""
    if not data.seekable():
        return None
    start = data.tell()
    size = data.seek(0, io.SEEK_END) - start
    data.seek(start)
    return data.read() if size <= SINGLE_PUT_MAX_BYTES else None


class _Unclosable:
    """A file whose close() is a no-op: its owner, not the upload, decides when it ends."""

    def __init__(self, data: IO[bytes]) -> None:
        self._data = data

    def close(self) -> None:
        pass

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._data, attr)


def _ls_reads(name: str) -> bool:
    """LS lists again for the update marker, and reads only ``.pb.gz`` objects: other
    stores and deletes (every ``.evs.zst`` delta) would only cost a HEAD and a PUT each
    and make LS list at every poll."""
    return name.endswith("." + EXT_LIGHTNINGSTREAM)
