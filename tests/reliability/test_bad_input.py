"""Bad input from users and from the network: one clear line, never a traceback or a leak.

Two tables pin what a user sees:

- broken configs, run through the real CLI (``python -m evsync -c FILE sync``) as a user
  would: exit code 2, exactly one ``evsync: config error: <key>: <problem>`` line on stderr,
  no traceback, no secret;
- hostile notifications: the exact :class:`MalformedEventError` reason of each malformed
  payload, the object names kept from the accepted ones; then all of them published to a
  real broker in front of a running daemon, which stays up, logs the first one, counts every
  one on ``/metrics`` and still merges a real object announced afterwards.

Rows that were bugs when this file was written (tracebacks, secrets in errors, configs
accepted that broke later) hold the line a user should see; ``bug()`` marks a new one as
``xfail(strict=True)`` until it is fixed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from evsync.cli import EXIT_USAGE
from evsync.snapshot.name import SnapshotName
from evsync.triggers.base import SOURCE_MQTT, HintQueue, hint_names
from evsync.triggers.s3events import (
    MAX_MESSAGE_BYTES,
    MAX_RECORDS,
    MalformedEventError,
    object_names,
    parse_message,
)
from tests.helpers import REPO, Instance, Mosquitto, free_port, wait_for

pytestmark = pytest.mark.reliability

Make = Callable[..., Instance]

# A config that is rejected must be rejected at once; a process still running after this
# long accepted the config (a bug row), and is killed.
CLI_TIMEOUT = 20.0
HANGS = 3.0  # the timeout of rows known to hang, so the bug does not cost 20 s each
UNSET_VAR = "EVSYNC_TEST_SURELY_UNSET_VAR"
SECRET_KEY = "s3cr3t-value"
ACCESS_KEY = "AKIA-ACCESS-4711"
MQTT_PASSWORD = "hunter2-pw"
SECRETS = (SECRET_KEY, ACCESS_KEY, MQTT_PASSWORD)
# The only line allowed before a config error found once the daemon is starting.
STARTING = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} INFO    evsync\.daemon: evsync starting: ")


# --------------------------------------------------------------------------- running the CLI


@dataclass
class Run:
    """What a user sees of one CLI run; ``code`` is None when it had to be killed."""

    code: int | None
    stdout: str
    stderr: str

    def describe(self) -> str:
        state = "still running (killed)" if self.code is None else f"exit {self.code}"
        return f"{state}\n--- stderr ---\n{self.stderr}--- stdout ---\n{self.stdout}"


def evsync(config: Path, *args: str, timeout: float = CLI_TIMEOUT) -> Run:
    """Run ``python -m evsync -c CONFIG ARGS`` from the repo, as a user would."""
    env = {k: v for k, v in os.environ.items() if k not in ("EVSYNC_CONFIG", UNSET_VAR)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "evsync", "-c", str(config), *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, errors="replace",
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return Run(proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        return Run(None, out, err)


def assert_config_error(run: Run, expected: str, *, after_start: bool = False) -> None:
    """Exit 2, nothing on stdout, no traceback, and stderr is exactly the one error line
    (after the daemon's "evsync starting" line when the error is found at start-up)."""
    lines = run.stderr.splitlines()
    if after_start and lines and STARTING.match(lines[0]):
        lines = lines[1:]
    assert "Traceback" not in run.stderr, run.describe()
    assert lines == [f"evsync: config error: {expected}"], run.describe()
    assert run.stdout == "", run.describe()
    assert run.code == EXIT_USAGE, run.describe()


# --------------------------------------------------------------------------- table 1: configs

# @LMDB@ is replaced by a fresh directory, @PATH@ (in expected lines) by the config file.
BASE = """\
instance: node-a
lmdbs:
  main:
    path: @LMDB@
    options: {create: true, map_size: 16MB}
storage:
  type: memory
"""


def swap(old: str, new: str) -> str:
    """BASE with one piece replaced."""
    assert old in BASE
    return BASE.replace(old, new)


S3 = "type: s3\n  options: {bucket: evs-bkt, endpoint_url: 'http://127.0.0.1:9'}"
MQTT = "notify:\n  mqtt:\n    url: mqtt://127.0.0.1:9\n"


def bug(reason: str) -> pytest.MarkDecorator:
    """A row that shows a bug in evsync/ (see the module docstring)."""
    return pytest.mark.xfail(strict=True, reason=f"bug: {reason}")


def row(
    case_id: str, text: str | bytes, expected: str, *, after_start: bool = False,
    timeout: float = CLI_TIMEOUT, marks: Any = (),
) -> Any:
    """One broken config: its text, the exact error, whether the daemon starts first."""
    return pytest.param(text, expected, after_start, timeout, id=case_id, marks=marks)


BAD_CONFIGS = [
    # --- the file itself
    row("yaml-syntax", "instance: [node-a\nlmdbs: {}\n",
        "config: @PATH@ line 2: invalid YAML: expected ',' or ']', but got ':'"),
    row("yaml-tab-indent", "instance: node-a\n\tlmdbs: x\n",
        "config: @PATH@ line 2: invalid YAML: found character '\\t' that cannot start any token"),
    row("yaml-unsafe-tag", BASE + "x: !!python/object/apply:os.system [echo pwned]\n",
        "config: @PATH@ line 8: invalid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'"),
    row("top-level-list", "- instance\n- lmdbs\n", "config: expected a mapping, got list"),
    row("top-level-scalar", "instance node-a\n", "config: expected a mapping, got str"),
    row("empty-file", "", "lmdbs: missing (at least one db is needed)"),
    row("not-utf8", b"instance: caf\xe9\n",
        "config: cannot read '@PATH@': not UTF-8 text"),
    row("yaml-nested-too-deep", BASE + "x: " + "[" * 3000 + "]" * 3000 + "\n",
        "config: @PATH@: invalid YAML: nested too deeply"),
    row("duplicate-key", BASE + "instance: node-b\n",
        "config: @PATH@ line 8: invalid YAML: duplicate key 'instance'",
        timeout=HANGS),
    # --- required keys
    row("missing-lmdbs", "instance: node-a\nstorage:\n  type: memory\n",
        "lmdbs: missing (at least one db is needed)"),
    row("lmdbs-is-a-list", swap("lmdbs:\n  main:\n    path: @LMDB@\n"
                                "    options: {create: true, map_size: 16MB}\n",
                                "lmdbs: [main]\n"),
        "lmdbs: expected a mapping, got list"),
    row("lmdb-without-path", swap("    path: @LMDB@\n", ""), "lmdbs.main.path: missing"),
    row("missing-storage", BASE.split("storage:", maxsplit=1)[0], "storage: missing"),
    row("storage-without-type", swap("type: memory", "options: {}"),
        "storage.type: missing (one of s3, fs, memory)"),
    row("s3-without-bucket", swap("type: memory", "type: s3\n  options: {region: us-east-1}"),
        "storage.options.bucket: missing"),
    row("fs-without-root-path", swap("type: memory", "type: fs"),
        "storage.options.root_path: missing"),
    # --- unknown keys
    row("unknown-top-level-key", BASE + "lmdb_pol_interval: 1s\n",
        "lmdb_pol_interval: unknown key"),
    row("unknown-nested-key", swap("    path:", "    schema_track_changes: true\n    path:"),
        "lmdbs.main.schema_track_changes: unknown key"),
    # a misspelt required key is named as unknown, not the key it hides as missing
    row("misspelt-storage-options", swap("type: memory", "type: fs\n  optons: {root_path: /x}"),
        "storage.optons: unknown key (did you mean 'options'?)"),
    row("misspelt-storage-type", swap("type: memory", "tpye: memory"),
        "storage.tpye: unknown key (did you mean 'type'?)"),
    row("misspelt-mqtt-url", BASE + "notify:\n  mqtt: {urll: 'mqtt://127.0.0.1:9'}\n",
        "notify.mqtt.urll: unknown key (did you mean 'url'?)"),
    row("misspelt-storage", swap("storage:", "storag:"),
        "storag: unknown key (did you mean 'storage'?)"),
    row("misspelt-lmdbs", swap("lmdbs:", "lmdb:"), "lmdb: unknown key (did you mean 'lmdbs'?)"),
    row("unknown-storage-type", swap("type: memory", "type: gcs"),
        "storage.type: must be one of s3, fs, memory, got 'gcs'"),
    # --- wrong types
    row("string-for-integer", BASE + "storage_retry_count: many\n",
        "storage_retry_count: expected an integer, got 'many'"),
    row("list-for-mapping", BASE + "sweeper: [enabled]\n",
        "sweeper: expected a mapping, got list"),
    row("string-for-boolean", BASE + "only_once: 'true'\n",
        "only_once: expected true or false, got 'true'"),
    row("number-for-duration", BASE + "lmdb_poll_interval: 5\n",
        "lmdb_poll_interval: expected a duration like 500ms, 1s, 5m, got 5"),
    # --- durations
    row("negative-duration", BASE + "lmdb_poll_interval: -1s\n",
        "lmdb_poll_interval: expected a duration like 500ms, 1s, 5m, got '-1s'"),
    row("zero-poll-interval", BASE + "lmdb_poll_interval: 0s\n",
        "lmdb_poll_interval: must be at least 0.01s, got 0s"),
    row("duration-in-parsecs", BASE + "storage_retry_interval: 5 parsecs\n",
        "storage_retry_interval: expected a duration like 500ms, 1s, 5m, got '5 parsecs'"),
    row("force-snapshot-too-short", BASE + "storage_force_snapshot_interval: 30s\n",
        "storage_force_snapshot_interval: must be 0 (off) or at least 1m, got 30s"),
    row("duration-beyond-go-range", BASE + "notify:\n  listing_interval: 3000000h\n",
        "notify.listing_interval: must be at most 2562047h, got 3000000h",
        timeout=HANGS),
    row("health-error-before-warn",
        BASE + "health:\n  storage_list: {warn_duration: 5m, error_duration: 1m}\n",
        "health.storage_list.error_duration: must not be shorter than warn_duration"),
    # --- numbers and sizes
    row("map-size-garbage", swap("map_size: 16MB", "map_size: lots"),
        "lmdbs.main.options.map_size: expected a size like 256MB or 1GB, got 'lots'"),
    row("map-size-negative", swap("map_size: 16MB", "map_size: -5"),
        "lmdbs.main.options.map_size: must not be negative"),
    row("retention-not-a-number", BASE + "sweeper: {enabled: true, retention_days: .nan}\n",
        "sweeper.retention_days: must be a finite number greater than 0, got nan",
        timeout=HANGS),
    row("retention-shorter-than-stale-instance-removal",
        BASE + "sweeper: {enabled: true, retention_days: 2}\n",
        "sweeper.retention_days: 2 days is shorter than "
        "storage.cleanup.remove_old_instances_interval (168h): a dead instance's last object "
        "would outlive the tombstones of later deletes"),
    row("sweeper-without-forced-snapshots",
        BASE + "storage_force_snapshot_interval: 0\nsweeper: {enabled: true}\n",
        "storage_force_snapshot_interval: 0 (off) with the sweeper on; it must be at most the "
        "retention minus the load cutoff (366.3 days), or a quiet writer's objects grow too old "
        "to be merged"),
    # --- notify
    row("mqtt-bad-scheme", BASE + "notify:\n  mqtt: {url: 'http://127.0.0.1:1883'}\n",
        "notify.mqtt.url: expected mqtt://host[:port] or mqtts://host[:port]"),
    row("mqtt-qos-3", BASE + MQTT + "    qos: 3\n", "notify.mqtt.qos: must be 0, 1 or 2, got 3"),
    row("mqtt-port-out-of-range", BASE + "notify:\n  mqtt: {url: 'mqtt://127.0.0.1:99999'}\n",
        "notify.mqtt.url: expected mqtt://host[:port] or mqtts://host[:port]",
        after_start=True),
    row("mqtt-tls-ca-file-missing",
        BASE + "notify:\n  mqtt:\n    url: mqtts://127.0.0.1:9\n"
        "    tls: {ca_file: /nonexistent/ca.pem}\n",
        "notify.mqtt.tls.ca_file: '/nonexistent/ca.pem' not found",
        after_start=True),
    # --- http, log, names
    row("http-address-without-port", BASE + "http:\n  address: localhost\n",
        "http.address: expected host:port, got 'localhost'"),
    row("http-port-out-of-range", BASE + "http:\n  address: 127.0.0.1:99999\n",
        "http.address: expected host:port, got '127.0.0.1:99999'", after_start=True),
    row("undefined-env-var", swap("node-a", "${" + UNSET_VAR + "}"),
        f"config: environment variable {UNSET_VAR} is not set (used as ${{{UNSET_VAR}}})"),
    row("unknown-log-level", BASE + "log:\n  level: verbose\n",
        "log.level: must be one of debug, info, warning, error, fatal, got 'verbose'"),
    row("instance-with-double-underscore", swap("node-a", "node__a"),
        "instance: 'node__a' may only hold letters, digits and '-' (no '_', '/' or spaces)"),
    row("instance-with-slash", swap("node-a", "node/a"),
        "instance: 'node/a' may only hold letters, digits and '-' (no '_', '/' or spaces)"),
    row("db-name-uppercase", swap("  main:", "  Main:"),
        "lmdbs.Main: db name 'Main' may only hold lowercase letters, digits and '-'"),
    # --- s3 options botocore rejects
    row("s3-endpoint-not-a-url",
        swap("type: memory", "type: s3\n  options: {bucket: evs-bkt, endpoint_url: not-a-url}"),
        "storage.options.endpoint_url: expected a URL like http://host:port, got 'not-a-url'"),
    row("s3-region-invalid",
        swap("type: memory", S3.replace("}", ", region: 'us east'}")),
        "storage.options.region: 'us east' is not a valid region name"),
    row("s3-bucket-name-invalid",
        swap("type: memory", S3.replace("evs-bkt", "'My Bucket'")),
        "storage.options.bucket: 'My Bucket' is not a valid bucket name",
        timeout=HANGS),
]


class TestBadConfig:
    """Every broken config stops ``evsync sync`` with exit 2 and one line naming the key."""

    @pytest.mark.parametrize(("text", "expected", "after_start", "timeout"), BAD_CONFIGS)
    def test_one_line_error(
        self, tmp_path: Path, text: str | bytes, expected: str, after_start: bool,
        timeout: float,
    ) -> None:
        """The config is refused with exactly the expected line; no traceback, no stdout."""
        config = tmp_path / "evsync.yaml"
        lmdb = str(tmp_path / "lmdb")
        if isinstance(text, bytes):
            config.write_bytes(text)
        else:
            config.write_text(text.replace("@LMDB@", lmdb), encoding="utf-8")
        run = evsync(config, "sync", timeout=timeout)
        assert_config_error(run, expected.replace("@PATH@", str(config)),
                            after_start=after_start)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A config path that does not exist is named in the one error line."""
        config = tmp_path / "nope.yaml"
        assert_config_error(evsync(config, "sync"), f"config: file '{config}' not found")

    def test_missing_instance_defaults_to_the_hostname(self, tmp_path: Path) -> None:
        """Without ``instance`` evsync is not in error: it runs as the sanitized hostname."""
        config = tmp_path / "evsync.yaml"
        config.write_text(swap("instance: node-a\n", "").replace("@LMDB@", str(tmp_path / "l")))
        run = evsync(config, "--log-config", "sync", "--only-once")
        assert run.code == 0, run.describe()
        (line,) = [ln for ln in run.stderr.splitlines() if "effective config: " in ln]
        printed = json.loads(line.split("effective config: ", 1)[1])
        assert printed["instance"] == re.sub(r"[^a-zA-Z0-9-]", "-", os.uname().nodename)


# --------------------------------------------------------------------------- secrets

WITH_SECRETS = swap(
    "type: memory",
    "type: s3\n  options: {bucket: evs-bkt, endpoint_url: 'http://127.0.0.1:9', "
    f"access_key: {ACCESS_KEY}, secret_key: '{SECRET_KEY}'}}",
) + f"notify:\n  mqtt: {{url: 'mqtt://127.0.0.1:9', username: bob, password: '{MQTT_PASSWORD}'}}\n"


def secret_row(case_id: str, text: str, expected: str, marks: Any = ()) -> Any:
    """One broken config holding secrets, and its exact error."""
    return pytest.param(text, expected, id=case_id, marks=marks)


SECRET_CONFIGS = [
    secret_row("error-elsewhere", WITH_SECRETS + "storage_retry_count: -1\n",
               "storage_retry_count: must be at least 1, got -1"),
    secret_row("yaml-error-on-the-secret-line",
               WITH_SECRETS.replace(f"password: '{MQTT_PASSWORD}'",
                                    f"password: '{MQTT_PASSWORD}"),
               "config: @PATH@ line 11: invalid YAML: found unexpected end of stream"),
    secret_row("secret-key-wrong-type",
               WITH_SECRETS.replace(f"'{SECRET_KEY}'", f"['{SECRET_KEY}']"),
               "storage.options.secret_key: expected a string, got list"),
    secret_row("access-key-wrong-type",
               WITH_SECRETS.replace(f"access_key: {ACCESS_KEY}",
                                    f"access_key: {{{ACCESS_KEY}: 1}}"),
               "storage.options.access_key: expected a string, got dict"),
    secret_row("mqtt-password-wrong-type",
               WITH_SECRETS.replace(f"'{MQTT_PASSWORD}'", f"['{MQTT_PASSWORD}']"),
               "notify.mqtt.password: expected a string, got list"),
]


def assert_no_secret(run: Run) -> None:
    """None of the secrets of the configs appears on stdout or stderr."""
    for secret in SECRETS:
        assert secret not in run.stdout + run.stderr, f"{secret!r} printed\n{run.describe()}"


class TestSecrets:
    """Secrets never reach the terminal: not in errors, not in the printed config."""

    @pytest.mark.parametrize(("text", "expected"), SECRET_CONFIGS)
    def test_error_does_not_print_secrets(
        self, tmp_path: Path, text: str, expected: str
    ) -> None:
        """A broken config holding secrets fails with one line in which no secret appears."""
        config = tmp_path / "evsync.yaml"
        config.write_text(text.replace("@LMDB@", str(tmp_path / "lmdb")))
        run = evsync(config, "sync")
        assert_no_secret(run)
        assert_config_error(run, expected.replace("@PATH@", str(config)))

    def test_log_config_masks_secrets(self, tmp_path: Path) -> None:
        """``--log-config`` prints the effective config with access_key, secret_key and the
        MQTT password as ``***`` (here before ``status`` fails: no HTTP endpoint is set)."""
        config = tmp_path / "evsync.yaml"
        config.write_text(WITH_SECRETS.replace("@LMDB@", str(tmp_path / "lmdb")))
        run = evsync(config, "--log-config", "status")
        assert_no_secret(run)
        (line,) = [ln for ln in run.stderr.splitlines() if "effective config: " in ln]
        printed = json.loads(line.split("effective config: ", 1)[1])
        s3 = printed["storage"]["options"]
        assert (s3["access_key"], s3["secret_key"]) == ("***", "***")
        assert printed["notify"]["mqtt"]["password"] == "***"
        assert printed["notify"]["mqtt"]["username"] == "bob"

    def test_log_config_masks_password_in_mqtt_url(self, tmp_path: Path) -> None:
        """A password written into the MQTT URL is masked or refused, never printed."""
        config = tmp_path / "evsync.yaml"
        config.write_text(
            BASE.replace("@LMDB@", str(tmp_path / "lmdb"))
            + f"notify:\n  mqtt: {{url: 'mqtt://bob:{MQTT_PASSWORD}@127.0.0.1:9'}}\n"
        )
        assert_no_secret(evsync(config, "--log-config", "dump"))


# --------------------------------------------------------------------------- table 2: events

BUCKET = "evs-bkt"
PREFIX = "evsync/"
T = 1_700_000_000_000_000_000
NAME_A = SnapshotName.build("main", "node-a", T).name


def record(key: Any, *, bucket: Any = BUCKET, name: Any = "ObjectCreated:Put") -> dict[str, Any]:
    """One S3 record, as AWS sends it (eventSource aws:s3)."""
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": name,
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1}}}


def s3_event(*records: Any) -> bytes:
    """An S3 event message: ``{"Records": [...]}``."""
    return json.dumps({"Records": list(records)}).encode()


def sns(message: str | bytes) -> bytes:
    """An SNS envelope (SNS -> SQS without raw delivery) around ``message``."""
    text = message.decode() if isinstance(message, bytes) else message
    return json.dumps({"Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:t",
                       "Message": text}).encode()


def minio(bucket: str, key: str) -> bytes:
    """MinIO's notify_mqtt payload: decoded top-level Key, one record with an encoded key."""
    rec = record(quote_plus(key, safe=""), bucket=bucket, name="s3:ObjectCreated:Put")
    rec["eventSource"] = "minio:s3"
    return json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{key}",
                       "Records": [rec]}).encode()


def strip(rec: dict[str, Any], *path: str) -> dict[str, Any]:
    """``rec`` without the key at ``path``."""
    node = rec
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return rec


HUGE = b'{"Records": [], "pad": "' + b"x" * MAX_MESSAGE_BYTES + b'"}'
ONE = record(PREFIX + NAME_A)

# (id, payload, the exact MalformedEventError reason)
MALFORMED_CASES: list[tuple[str, bytes, str]] = [
    ("not-json", b"hello", "not JSON: Expecting value: line 1 column 1 (char 0)"),
    ("truncated-json", b'{"Records": [', "not JSON: Expecting value: line 1 column 14 (char 13)"),
    ("invalid-utf8", b'{"Records": [], "x": "\xff"}',
     "not JSON: 'utf-8' codec can't decode byte 0xff in position 22: invalid start byte"),
    ("json-array", b"[1, 2]", "expected a JSON object, got list"),
    ("json-string", b'"Records"', "expected a JSON object, got str"),
    ("no-records", b'{"foo": 1}', "no Records list"),
    ("records-not-a-list", b'{"Records": {"0": {}}}', "no Records list"),
    ("record-not-an-object", s3_event(7), "a record is not an object"),
    ("missing-eventName", s3_event(strip(record(PREFIX + NAME_A), "eventName")),
     "record without eventName"),
    ("eventName-not-a-string", s3_event(record(PREFIX + NAME_A, name=5)),
     "record without eventName"),
    ("missing-s3", s3_event(strip(record(PREFIX + NAME_A), "s3")), "record without s3"),
    ("missing-bucket", s3_event(strip(record(PREFIX + NAME_A), "s3", "bucket")),
     "record without s3.bucket or s3.object"),
    ("missing-key", s3_event(strip(record(PREFIX + NAME_A), "s3", "object", "key")),
     "s3.bucket.name or s3.object.key is not a string"),
    ("key-not-a-string", s3_event(record(12345)),
     "s3.bucket.name or s3.object.key is not a string"),
    ("good-record-then-bad-one", s3_event(ONE, 7), "a record is not an object"),
    ("huge-message", HUGE, f"message too large ({len(HUGE)} bytes)"),
    ("too-many-records", s3_event(*[ONE] * (MAX_RECORDS + 1)),
     f"too many records ({MAX_RECORDS + 1})"),
    ("nested-sns", sns(sns(s3_event(ONE))), "nested SNS envelopes"),
    ("sns-message-not-json", sns("You have a new object"), "SNS Message is not JSON"),
    ("sns-message-not-a-string",
     json.dumps({"Type": "Notification", "Message": {"Records": []}}).encode(),
     "SNS Message is not a string"),
    ("sns-message-a-list", sns("[]"), "expected a JSON object, got list"),
    ("minio-without-records",
     json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": f"{BUCKET}/{PREFIX}{NAME_A}"})
     .encode(), "no Records list"),
]

# (id, payload, the names object_names keeps for BUCKET and PREFIX): not errors
ACCEPTED_CASES: list[tuple[str, bytes, list[str]]] = [
    ("aws-put", s3_event(ONE), [NAME_A]),
    ("minio-put", minio(BUCKET, PREFIX + NAME_A), [NAME_A]),
    ("sns-wrapped-put", sns(s3_event(ONE)), [NAME_A]),
    ("utf8-bom", b"\xef\xbb\xbf" + s3_event(ONE), [NAME_A]),
    ("object-removed", s3_event(record(PREFIX + NAME_A, name="ObjectRemoved:Delete")), []),
    ("sns-wrapped-removal",
     sns(s3_event(record(PREFIX + NAME_A, name="ObjectRemoved:Delete"))), []),
    ("other-bucket", s3_event(record(PREFIX + NAME_A, bucket="someone-elses")), []),
    ("other-prefix", s3_event(record("backups/" + NAME_A)), []),
    ("below-the-prefix", s3_event(record(PREFIX + "sub/" + NAME_A)), []),
    ("key-fully-percent-encoded", s3_event(record(quote_plus(PREFIX + NAME_A, safe=""))),
     [NAME_A]),
    ("key-plus-and-percent", s3_event(record(PREFIX + "a+b%2Bc%20d%C3%A9")),
     ["a b+c d\u00e9"]),
    ("key-non-utf8-escape", s3_event(record(PREFIX + "main__node-a__%FF%FE.evs.zst")),
     ["main__node-a__\ufffd\ufffd.evs.zst"]),
    ("key-nul-escape", s3_event(record(PREFIX + "main__x%00y")), ["main__x\x00y"]),
    ("key-dotdot", s3_event(record(PREFIX + "..")), [".."]),
    ("key-dotdot-slash", s3_event(record(PREFIX + "%2E%2E%2F" + NAME_A)), []),
    ("key-traversal", s3_event(record(f"{PREFIX}..%2F..%2Fetc%2Fpasswd")), []),
    ("key-traversal-to-prefix", s3_event(record("%2E%2E%2F" + PREFIX + NAME_A)), []),
]

MALFORMED = [pytest.param(p, r, id=i) for i, p, r in MALFORMED_CASES]


def is_utf8(payload: bytes) -> bool:
    """Whether the payload could be an SQS body (SQS bodies are text)."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# The same payloads as SQS bodies (str), where they are text.
SQS_MALFORMED = [pytest.param(p.decode(), r, id=i) for i, p, r in MALFORMED_CASES if is_utf8(p)]
ACCEPTED = [pytest.param(p, names, id=i) for i, p, names in ACCEPTED_CASES]

# Names the parser lets through although no syncer may act on them.
HOSTILE_NAMES = ["..", "main__x\x00y", "main__node-a__\ufffd\ufffd.evs.zst", "main__..",
                 "main__node-a__../../x.evs.zst", NAME_A.replace("main", "main/..", 1)]


class TestHostileNotifications:
    """parse_message + object_names: exact reasons for the malformed, exact names for the rest."""

    @pytest.mark.parametrize(("payload", "expected"), MALFORMED)
    def test_malformed_reason(self, payload: bytes, expected: str) -> None:
        """The payload raises MalformedEventError with exactly the pinned reason."""
        with pytest.raises(MalformedEventError) as info:
            parse_message(payload)
        assert str(info.value) == expected

    @pytest.mark.parametrize(("payload", "expected"), SQS_MALFORMED)
    def test_malformed_as_sqs_body(self, payload: str, expected: str) -> None:
        """The same payload as an SQS body (always text) gives the same reason."""
        with pytest.raises(MalformedEventError) as info:
            parse_message(payload)
        assert str(info.value) == expected

    @pytest.mark.parametrize(("payload", "expected"), ACCEPTED)
    def test_accepted_names(self, payload: bytes, expected: list[str]) -> None:
        """Not an error: these names (this bucket, directly under the prefix) are kept."""
        assert object_names(parse_message(payload), BUCKET, PREFIX) == expected

    @pytest.mark.parametrize("name", HOSTILE_NAMES)
    def test_hostile_names_wake_no_syncer(self, name: str) -> None:
        """A hostile decoded key never reaches the syncer: object_names drops it (a '/' in
        it), hint_names finds no db for it, or the db's hint queue counts it as ignored (not
        a snapshot name)."""
        queue = HintQueue("main", own_instance="node-z")
        names = object_names(
            parse_message(s3_event(record(PREFIX + quote_plus(name, safe="")))), BUCKET, PREFIX)
        hint_names([queue], SOURCE_MQTT, names)
        assert queue.wait(0).remote == {}
        assert queue.first[SOURCE_MQTT] == 0
        assert queue.ignored[SOURCE_MQTT] == queue.received[SOURCE_MQTT]


# --------------------------------------------------------------------------- end to end


def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample from a live /metrics page, or None when absent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name and ",".join(
            sorted((match.group(2) or "").split(","))
        ) == want:
            return float(match.group(3))
    return None


def status(port: int) -> dict[str, Any]:
    """A running daemon's /status."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def malformed_log_lines(inst: Instance) -> list[str]:
    """The malformed-message warnings of an instance's log, without time and level."""
    return [line.split("evsync.triggers.mqtt: ", 1)[1] for line in inst.log().splitlines()
            if "ignoring malformed message" in line]


@pytest.mark.integration
class TestHostileBroker:
    """A running daemon fed the whole table over MQTT stays up, counts, and still syncs."""

    def test_daemon_survives_the_table(
        self, instances: Make, s3_storage: dict[str, Any], mosquitto: Mosquitto, topic: str,
        bucket: str, aws: Any,
    ) -> None:
        """Every malformed payload is counted on /metrics, only the first is logged (the rest
        are rate-limited), accepted ones are not counted as malformed, and an object stored
        afterwards by another instance is merged from its MinIO-style event alone (listing
        once an hour)."""
        port = free_port()
        b = instances("b", s3_storage, http={"address": f"127.0.0.1:{port}"},
                      notify={"listing_interval": "1h",
                              "mqtt": {"url": mosquitto.url, "topic": topic}}).start()
        wait_for(lambda: status(port)["push_sources"]["mqtt"]["connected"], what="b on mqtt")
        malformed = [payload for _id, payload, _reason in MALFORMED_CASES]
        accepted = [payload for _id, payload, _names in ACCEPTED_CASES]
        for payload in malformed + accepted:
            mosquitto.publish(topic, payload)

        def counted() -> float | None:
            return metric(port, "evsync_notifications_received_total", source="mqtt")

        wait_for(lambda: counted() == len(malformed) + len(accepted),
                 what="every message received", timeout=10)
        assert b.proc is not None and b.proc.poll() is None, b.log()
        assert metric(port, "evsync_notifications_malformed_total", source="mqtt") == len(
            malformed)
        first = MALFORMED_CASES[0][2]
        assert malformed_log_lines(b) == [
            f"mqtt: ignoring malformed message on {topic}: {first} (1 so far)"]
        assert "Traceback" not in b.log()

        a = instances("a", s3_storage)
        a.writer.put("www", "192.0.2.1")
        done = a.command("sync", "--only-once")
        assert done.returncode == 0, done.stderr
        (name,) = [o["Key"] for o in aws.client().list_objects_v2(Bucket=bucket)["Contents"]]
        assert b.writer.get("www") is None  # nothing but the event below can bring it
        mosquitto.publish(topic, minio(bucket, name))
        wait_for(lambda: b.writer.get("www") == "192.0.2.1", timeout=10,
                 what="b to merge a's object")
        assert metric(port, "evsync_notifications_malformed_total", source="mqtt") == len(
            malformed)
        assert (metric(port, "evsync_hints_total", db="main", source="mqtt") or 0) >= 1
        assert metric(port, "evsync_hints_total", db="main", source="listing") in (None, 0.0)
        assert b.proc.poll() is None
