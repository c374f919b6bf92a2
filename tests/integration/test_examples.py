"""Every shipped example config (config/*.yaml) runs as written, two instances side by
side on one host, against the local services the suite has (issue 19).

Each config is started exactly as its comments (or the README / localstack/README)
document it, with only its environment variables pointing at this suite's servers:
a fresh moto server for S3 (and SQS for the SQS configs), a Mosquitto on a free port,
temporary LMDBs for the PowerDNS configs. Instance ``one`` stores an object; instance
``two``, started after it, merges it; where the config announces objects over MQTT a
second write travels to the running ``two`` by announcement (the listing runs only
every 60 s there). Every instance gets its own ``EVSYNC_HTTP`` and `evsync status`
answers from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import REPO, Mosquitto, MotoServer, free_port, terminate, wait_for

pytestmark = pytest.mark.integration

CONFIG_DIR = REPO / "config"
INSTANCES = ("one", "two")
START_TIMEOUT = 30.0
SYNC_TIMEOUT = 30.0
# well under the configs' 60 s listing: only a push (an announcement) is this fast
PUSH_TIMEOUT = 15.0
POLL_INTERVAL = 0.3
# the variables the configs read; the test's own environment must not leak into them
CONFIG_VARS = (
    "EVSYNC_INSTANCE", "EVSYNC_DATA", "EVSYNC_HTTP", "S3_BUCKET", "S3_PREFIX",
    "S3_ENDPOINT_URL", "S3_REGION", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_CREATE_BUCKET",
    "MQTT_URL", "MINIO_URL", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "LOCALSTACK_URL",
    "PDNS_LMDB", "AWS_REGION", "AWS_ACCOUNT_ID", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "EVSYNC_CONFIG",
)
MOTO_ACCOUNT = "123456789012"


@dataclass
class Services:
    """What the suite runs for one test: a fresh S3/SQS and a broker."""

    moto: MotoServer
    mosquitto: Mosquitto
    root: Path


@dataclass
class Example:
    """How one shipped config is run: its documented environment per instance, what
    exists before it starts (buckets, queues), where each instance's LMDB is."""

    config: str
    env: Callable[[Services, str], dict[str, str]]
    lmdb: Callable[[Services, str], Path]
    no_subdir: bool = False
    buckets: tuple[str, ...] = ()
    queues: bool = False
    pushes: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def _s3_env(s: Services) -> dict[str, str]:
    return {"S3_ENDPOINT_URL": s.moto.endpoint, "S3_ACCESS_KEY": "test",
            "S3_SECRET_KEY": "test"}


def _data(s: Services, inst: str) -> Path:
    return s.root / "data" / inst


EXAMPLES = {
    # README: `make run` / `make run INSTANCE=two` (a directory is the bucket)
    "quickstart": Example(
        "quickstart.yaml",
        env=lambda s, i: {"EVSYNC_DATA": str(s.root / "data")},
        lmdb=lambda s, i: s.root / "data" / i / "main",
    ),
    # config/s3.yaml: S3_ENDPOINT_URL and the keys; it creates the bucket
    "s3": Example(
        "s3.yaml",
        env=lambda s, i: {**_s3_env(s), "EVSYNC_DATA": str(_data(s, i))},
        lmdb=lambda s, i: _data(s, i) / "main",
    ),
    # localstack/README: any S3 plus a broker, against a fresh bucket-less S3
    "mqtt-announce": Example(
        "mqtt-announce.yaml",
        env=lambda s, i: {**_s3_env(s), "MQTT_URL": s.mosquitto.url,
                          "EVSYNC_DATA": str(_data(s, i))},
        lmdb=lambda s, i: _data(s, i) / "main",
        pushes=True,
    ),
    # MinIO's side (`mc mb`, notify_mqtt) is set up by hand: the bucket exists here
    "minio-mqtt": Example(
        "minio-mqtt.yaml",
        env=lambda s, i: {"MINIO_URL": s.moto.endpoint, "MINIO_ACCESS_KEY": "test",
                          "MINIO_SECRET_KEY": "test", "MQTT_URL": s.mosquitto.url,
                          "EVSYNC_DATA": str(_data(s, i))},
        lmdb=lambda s, i: _data(s, i) / "main",
        buckets=("evsync",),
    ),
    # localstack/README: init/setup.sh made the bucket and a queue per instance
    "localstack": Example(
        "localstack.yaml",
        env=lambda s, i: {"LOCALSTACK_URL": s.moto.endpoint, "EVSYNC_DATA": str(s.root / "ls")},
        lmdb=lambda s, i: s.root / "ls" / i / "main",
        buckets=("evsync",),
        queues=True,
    ),
    # AWS: the credential chain and AWS_ENDPOINT_URL (boto3's own variable) point at moto
    "aws-sns-sqs": Example(
        "aws-sns-sqs.yaml",
        env=lambda s, i: {"S3_BUCKET": "evsync-aws", "AWS_REGION": "us-east-1",
                          "AWS_ACCOUNT_ID": MOTO_ACCOUNT, "AWS_ENDPOINT_URL": s.moto.endpoint,
                          "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                          "EVSYNC_DATA": str(_data(s, i))},
        lmdb=lambda s, i: _data(s, i) / "main",
        buckets=("evsync-aws",),
        queues=True,
    ),
    # PowerDNS: its LMDB (PDNS_LMDB) in a temporary directory, no pdns_server needed
    "pdns47": Example(
        "pdns47.yaml",
        env=lambda s, i: {**_s3_env(s), "MQTT_URL": s.mosquitto.url,
                          "PDNS_LMDB": str(_data(s, i) / "pdns.lmdb")},
        lmdb=lambda s, i: _data(s, i) / "pdns.lmdb",
        no_subdir=True,
        buckets=("evsync-pdns47",),
        pushes=True,
    ),
    "pdns48": Example(
        "pdns48.yaml",
        env=lambda s, i: {**_s3_env(s), "MQTT_URL": s.mosquitto.url,
                          "PDNS_LMDB": str(_data(s, i) / "pdns.lmdb")},
        lmdb=lambda s, i: _data(s, i) / "pdns.lmdb",
        no_subdir=True,
        buckets=("evsync-pdns48",),
        pushes=True,
    ),
    # docs/lightningstream.md: one instance of an LS cluster replaced, LS's bucket as is
    "ls-migration": Example(
        "ls-migration.yaml",
        env=lambda s, i: {**_s3_env(s), "PDNS_LMDB": str(_data(s, i) / "pdns.lmdb")},
        lmdb=lambda s, i: _data(s, i) / "pdns.lmdb",
        no_subdir=True,
        buckets=("evsync-ls",),
    ),
}


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """A fresh moto server (S3, SQS, SNS) and Mosquitto for one test."""
    moto = MotoServer().start()
    broker = Mosquitto(tmp_path / "mosquitto")
    try:
        broker.start()
        yield Services(moto, broker, tmp_path)
    finally:
        broker.stop()
        moto.stop()


class Running:
    """One `evsync sync` of a shipped config, with its environment and log."""

    def __init__(self, example: Example, services: Services, instance: str) -> None:
        self.example = example
        self.instance = instance
        self.lmdb = example.lmdb(services, instance)
        self.env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
        self.env.update(EVSYNC_INSTANCE=instance, EVSYNC_HTTP=f"127.0.0.1:{free_port()}")
        self.env.update(example.env(services, instance))
        self.log_path = services.root / f"{instance}.log"
        self.lmdb.parent.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def evsync(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "evsync", "-c", f"config/{self.example.config}", *args],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60, check=False)

    def start(self) -> Running:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "evsync", "-c", f"config/{self.example.config}", "sync"],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._up_or_dead, timeout=START_TIMEOUT, interval=POLL_INTERVAL,
                 what=f"{self.instance} to start")
        assert self.proc.poll() is None, f"{self.instance} exited:\n{self.log()}"
        return self

    def _up_or_dead(self) -> bool:
        dead = self.proc is not None and self.proc.poll() is not None
        return dead or "startup listing" in self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        flags = ["--no-subdir"] if self.example.no_subdir else []
        return subprocess.run(
            [sys.executable, "-m", "evsync.tools.lmdb_write", str(self.lmdb), *flags, *args],
            cwd=REPO, capture_output=True, text=True, timeout=30, check=False)

    def put(self, key: str, value: str) -> None:
        done = self._tool("put", "records", key, value)
        assert done.returncode == 0, done.stderr

    def get(self, key: str) -> str | None:
        done = self._tool("get", "records", key)
        return done.stdout.strip() if done.returncode == 0 else None

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None


def _prepare(example: Example, services: Services) -> None:
    """What the config's documentation has one create by hand before starting."""
    for bucket in example.buckets:
        services.moto.client().create_bucket(Bucket=bucket)
    if example.queues:
        sqs = services.moto.boto("sqs")
        for inst in INSTANCES:
            sqs.create_queue(QueueName=f"evsync-{inst}")


class TestShippedExamples:
    """Each config/*.yaml starts as documented, two instances side by side, and syncs."""

    def test_every_example_is_covered(self) -> None:
        """A config added to config/ needs a case here."""
        shipped = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
        assert shipped <= set(EXAMPLES), sorted(shipped - set(EXAMPLES))

    @pytest.mark.parametrize("name", sorted(EXAMPLES))
    def test_two_instances_sync(self, name: str, services: Services) -> None:
        """`one` stores a record's object, `two` (started beside it, its own
        EVSYNC_HTTP) merges it; a config that announces over MQTT brings a second
        record to the running `two` by announcement; `evsync status` answers both."""
        example = EXAMPLES[name]
        # a case whose config is no longer shipped fails: it must go with its config
        assert (CONFIG_DIR / example.config).exists(), f"config/{example.config} is gone"
        _prepare(example, services)
        one = Running(example, services, "one")
        two = Running(example, services, "two")
        try:
            one.start()
            one.put("www.example", "192.0.2.1")
            wait_for(lambda: "stored main__one__" in one.log(), timeout=SYNC_TIMEOUT,
                     interval=POLL_INTERVAL, what="one to store an object")
            two.start()
            wait_for(lambda: two.get("www.example") == "192.0.2.1", timeout=SYNC_TIMEOUT,
                     interval=POLL_INTERVAL, what=f"two to merge\n{two.log()}")
            if example.pushes:
                one.put("mail.example", "192.0.2.25")
                wait_for(lambda: two.get("mail.example") == "192.0.2.25",
                         timeout=PUSH_TIMEOUT, interval=POLL_INTERVAL,
                         what=f"the announcement to reach two\n{two.log()}")
            for running in (one, two):
                status = running.evsync("status")
                assert status.returncode == 0, status.stderr
                assert f"instance {running.instance} " in status.stdout
        finally:
            one.stop()
            two.stop()
        for running in (one, two):
            assert "Traceback" not in running.log(), running.log()


class TestSideBySide:
    """What happens when two instances on one host are not given their own port."""

    def test_port_in_use_is_a_runtime_error(self, tmp_path: Path) -> None:
        """A second instance on a taken http.address exits 1 with "error:", naming the
        address and what to do — not a "config error" (exit 2): the config is valid."""
        services = Services(None, None, tmp_path)  # type: ignore[arg-type]
        example = EXAMPLES["quickstart"]
        one = Running(example, services, "one")
        two = Running(example, services, "two")
        two.env["EVSYNC_HTTP"] = one.env["EVSYNC_HTTP"]
        try:
            one.start()
            res = two.evsync("sync")
        finally:
            one.stop()
        assert res.returncode == 1, res.stderr
        line = res.stderr.strip().splitlines()[-1]
        assert line.startswith(f"evsync: error: http.address: cannot listen on "
                               f"{one.env['EVSYNC_HTTP']}"), line
        assert "EVSYNC_HTTP" in line and "config error" not in res.stderr


class TestFreshS3:
    """A config that must not create its bucket, against an S3 without it."""

    def test_missing_bucket_says_how_to_create_it(self, services: Services) -> None:
        """mqtt-announce.yaml with S3_CREATE_BUCKET=false on a fresh S3: the error line
        names the missing bucket and how to create it (it stalled on NoSuchBucket)."""
        one = Running(EXAMPLES["mqtt-announce"], services, "one")
        one.env["S3_CREATE_BUCKET"] = "false"
        res = one.evsync("sync", "--only-once")
        assert res.returncode == 1
        line = next(x for x in res.stderr.splitlines() if "NoSuchBucket" in x)
        assert "bucket 'evsync'" in line and "aws s3 mb s3://evsync" in line, line
        assert "create_bucket: true" in line, line
