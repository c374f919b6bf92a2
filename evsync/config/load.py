"""Read a config: YAML (strict: no duplicate keys), ``${ENV}``, then every section
checked key by key into the dataclasses of ``schema.py``.

Every error is a :class:`~evsync.errors.ConfigError` whose message starts with the
dotted key it is about, e.g. ``lmdbs.main.path: missing``; a leftover key is an error
(named as the misspelling of a missing one when it looks like it).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from evsync.config.env import EnvText, expand_tree
from evsync.config.schema import (
    DEFAULT_CLEANUP_INTERVAL,
    DEFAULT_CLOCK_SKEW_THRESHOLD,
    DEFAULT_DELTA_FULL_INTERVAL,
    DEFAULT_DELTA_MAX_CHAIN,
    DEFAULT_DELTA_MAX_CHAIN_RATIO,
    DEFAULT_FORCE_SNAPSHOT_INTERVAL,
    DEFAULT_HEALTH,
    DEFAULT_LMDB_POLL_INTERVAL,
    DEFAULT_LS_WRITE_INTERVAL,
    DEFAULT_MAP_SIZE_ON_CREATE,
    DEFAULT_MAX_DBS,
    DEFAULT_MQTT_INLINE_MAX_BYTES,
    DEFAULT_MQTT_TOPIC,
    DEFAULT_MUST_KEEP_INTERVAL,
    DEFAULT_REMOVE_OLD_INSTANCES_INTERVAL,
    DEFAULT_RETENTION_DAYS,
    DEFAULT_S3_DIAL_TIMEOUT,
    DEFAULT_S3_READ_TIMEOUT,
    DEFAULT_S3_REGION,
    DEFAULT_START_HEALTH,
    DEFAULT_STORAGE_MAX_INFLATED_SIZE,
    DEFAULT_STORAGE_POLL_INTERVAL,
    DEFAULT_STORAGE_RETRY_COUNT,
    DEFAULT_STORAGE_RETRY_INTERVAL,
    DEFAULT_SWEEP_FIRST_INTERVAL,
    DEFAULT_SWEEP_INTERVAL,
    DEFAULT_SWEEP_LOCK_DURATION,
    DEFAULT_UPDATE_MARKER_FORCE_LIST_INTERVAL,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_MQTT_INLINE_BYTES,
    MIN_FORCE_SNAPSHOT_INTERVAL,
    MIN_POLL_INTERVAL,
    MIN_STORAGE_MAX_INFLATED_SIZE,
    CleanupConfig,
    Config,
    DbiOptions,
    DeltasConfig,
    FsOptions,
    HealthCheckConfig,
    HealthConfig,
    LightningStreamConfig,
    LmdbConfig,
    LmdbOptions,
    LogConfig,
    MemoryOptions,
    MqttConfig,
    MqttTls,
    NotifyConfig,
    S3Options,
    SqsConfig,
    StartHealthConfig,
    StorageConfig,
    StorageOptions,
    SweeperConfig,
)
from evsync.config.values import (
    parse_dbi_flags,
    parse_duration,
    parse_size,
    sanitize_instance,
    validate_db_name,
    validate_instance,
)
from evsync.errors import ConfigError

DEFAULT_CONFIG_FILE = "evsync.yaml"

CONFIG_ENV_VAR = "EVSYNC_CONFIG"

# LS keys that evsync accepts so an LS config loads, but that have no effect here.
LS_ACCEPTED_NOOP_KEYS = frozenset(
    {
        "lmdb_log_stats_interval",
        "lmdb_scrape_smaps",
        "memory_downloaded_snapshots",
        "memory_decompressed_snapshots",
    }
)


# how alike a leftover key and a missing one must be (difflib's ratio) to be named as
# its misspelling: 'tpye' and 'type' score 0.75, 'optons' and 'options' 0.92
MISSPELT_CUTOFF = 0.7


_ENV_TRUE_FALSE = {"true": True, "false": False}
_ENV_INT = re.compile(r"[+-]?[0-9]+")
_ENV_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _from_env(value: object) -> object:
    """For a boolean or numeric key: ``${ENV}`` text in that type's plain spelling
    becomes the value (``true``, ``7``, ``0.5``); anything else is left for the key's
    own check to reject, so ``yes`` is not a boolean and ``0777`` not octal."""
    if not isinstance(value, EnvText):
        return value
    text = value.strip()
    if text.lower() in _ENV_TRUE_FALSE:
        return _ENV_TRUE_FALSE[text.lower()]
    if _ENV_INT.fullmatch(text):
        return int(text)
    if _ENV_FLOAT.fullmatch(text):
        return float(text)
    return value


class _Section:
    """A mapping being read: takes keys one by one and rejects the leftovers."""

    def __init__(
        self, data: object, path: str, *, parent: _Section | None = None, name: str = ""
    ) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
        self._data = dict(data)
        self.path = path
        self._parent = parent
        self._name = name
        self._given = bool(data)

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self._data and self._data[name] is not None

    def raw(self, name: str) -> object:
        return self._data.pop(name, None)

    def section(self, name: str) -> _Section:
        return _Section(self.raw(name), self.key(name), parent=self, name=name)

    def missing(self, name: str, detail: str = "") -> ConfigError:
        """The error for a required key that is absent. A misspelt key is the likelier
        mistake, so a leftover key close to the wanted one (or, for an empty section, to
        the section's own name in its parent) is named instead: ``storage.optons:
        unknown key (did you mean 'options'?)`` rather than ``storage.options.root_path:
        missing``."""
        # the parent only when this section is absent: then its own name may be misspelt
        parent = None if self._given else self._parent
        for section, wanted in ((self, name), (parent, self._name)):
            if section is None or not wanted:
                continue
            leftovers = [str(key) for key in section._data]
            close = difflib.get_close_matches(wanted, leftovers, n=1, cutoff=MISSPELT_CUTOFF)
            if close:
                return ConfigError(
                    f"{section.key(close[0])}: unknown key (did you mean {wanted!r}?)"
                )
        return ConfigError(f"{self.key(name)}: missing{detail}")

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.raw(name)
        if value is None or value == "":
            if required:
                raise self.missing(name)
            return default if default is not None else ""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            # the type only: the value may be a secret
            raise ConfigError(f"{self.key(name)}: expected a string, got {type(value).__name__}")
        return str(value)

    def optional_string(self, name: str) -> str | None:
        value = self.string(name)
        return value or None

    def boolean(self, name: str, default: bool) -> bool:
        value = _from_env(self.raw(name))
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(name)}: expected true or false, got {value!r}")
        return value

    def integer(self, name: str, default: int, *, minimum: int | None = None) -> int:
        value = _from_env(self.raw(name))
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.key(name)}: expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{self.key(name)}: must be at least {minimum}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float | None = None) -> float:
        value = _from_env(self.raw(name))
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.key(name)}: expected a number, got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{self.key(name)}: must be at least {minimum}, got {value}")
        return float(value)

    def duration(self, name: str, default: float, *, minimum: float | None = None) -> float:
        value = self.raw(name)
        if value is None:
            return default
        seconds = parse_duration(value, self.key(name))
        if minimum is not None and seconds < minimum:
            raise ConfigError(f"{self.key(name)}: must be at least {minimum:g}s, got {value}")
        return seconds

    def size(self, name: str, default: int, *, minimum: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        size = parse_size(value, self.key(name))
        if minimum is not None and size < minimum:
            raise ConfigError(f"{self.key(name)}: must be at least {minimum >> 20}MB, got {value}")
        return size

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise ConfigError(
                f"{self.key(name)}: must be one of {', '.join(choices)}, got {value!r}"
            )
        return value

    def done(self) -> None:
        """Reject every key that was not read: LS loads YAML strictly too."""
        for name in self._data:
            raise ConfigError(f"{self.key(str(name))}: unknown key")


def _load_lmdb(name: str, data: object, path: str) -> LmdbConfig:
    sec = _Section(data, path)
    db_path = sec.string("path", required=True)
    tracks = sec.boolean("schema_tracks_changes", False)
    dupsort = sec.boolean("dupsort_hack", False)
    if tracks and dupsort:
        raise ConfigError(
            f"{sec.key('dupsort_hack')}: cannot be combined with schema_tracks_changes"
        )
    opt = sec.section("options")
    create = opt.boolean("create", False)
    map_size = opt.size("map_size", 0)
    if create and map_size == 0:
        map_size = DEFAULT_MAP_SIZE_ON_CREATE
    options = LmdbOptions(
        no_subdir=opt.boolean("no_subdir", False),
        create=create,
        map_size=map_size,
        max_dbs=opt.integer("max_dbs", 0, minimum=0) or DEFAULT_MAX_DBS,
    )
    opt.raw("dir_mask")  # accepted for LS compatibility; the umask applies
    opt.raw("file_mask")
    opt.done()
    dbi_sec = sec.section("dbi_options")
    dbi_options: dict[str, DbiOptions] = {}
    for dbi_name in list(dbi_sec._data):
        dsec = dbi_sec.section(str(dbi_name))
        flags_raw = dsec.raw("override_create_flags")
        flags = (
            None
            if flags_raw is None
            else parse_dbi_flags(flags_raw, dsec.key("override_create_flags"))
        )
        dsec.done()
        dbi_options[str(dbi_name)] = DbiOptions(override_create_flags=flags)
    dbi_sec.done()
    sec.raw("header_extra_padding_block")  # LS dev/test-only option, not supported
    sec.done()
    return LmdbConfig(
        name=name,
        path=db_path,
        schema_tracks_changes=tracks,
        dupsort_hack=dupsort,
        options=options,
        dbi_options=dbi_options,
    )


def _load_storage(data: object) -> StorageConfig:
    sec = _Section(data, "storage")
    kind = sec.choice("type", "", ("s3", "fs", "memory")) if sec.has("type") else ""
    if not kind:
        raise sec.missing("type", " (one of s3, fs, memory)")
    opt = sec.section("options")
    if sec.has("root_path"):  # LS's deprecated spelling of options.root_path
        opt._data.setdefault("root_path", sec.raw("root_path"))
    options: StorageOptions
    if kind == "s3":
        options = S3Options(
            bucket=opt.string("bucket", required=True),
            endpoint_url=opt.optional_string("endpoint_url"),
            region=opt.string("region", DEFAULT_S3_REGION),
            access_key=opt.optional_string("access_key"),
            secret_key=opt.optional_string("secret_key"),
            global_prefix=opt.string("global_prefix", ""),
            create_bucket=opt.boolean("create_bucket", False),
            dial_timeout=opt.duration("dial_timeout", DEFAULT_S3_DIAL_TIMEOUT, minimum=0.001),
            read_timeout=opt.duration("read_timeout", DEFAULT_S3_READ_TIMEOUT, minimum=0.001),
            use_update_marker=opt.boolean("use_update_marker", False),
            update_marker_force_list_interval=opt.duration(
                "update_marker_force_list_interval",
                DEFAULT_UPDATE_MARKER_FORCE_LIST_INTERVAL,
                minimum=1.0,
            ),
        )
        if (options.access_key is None) != (options.secret_key is None):
            raise ConfigError(
                "storage.options: access_key and secret_key must be set together "
                "(or neither, to use the AWS credential chain)"
            )
        _check_s3_options(options)
    elif kind == "fs":
        options = FsOptions(
            root_path=opt.string("root_path", required=True),
            watch=opt.boolean("watch", True),
        )
    else:
        options = MemoryOptions()
    opt.done()
    csec = sec.section("cleanup")
    cleanup = CleanupConfig(
        enabled=csec.boolean("enabled", True),
        interval=csec.duration("interval", DEFAULT_CLEANUP_INTERVAL, minimum=1.0),
        must_keep_interval=csec.duration("must_keep_interval", DEFAULT_MUST_KEEP_INTERVAL),
        remove_old_instances_interval=csec.duration(
            "remove_old_instances_interval", DEFAULT_REMOVE_OLD_INSTANCES_INTERVAL
        ),
    )
    csec.done()
    sec.done()
    return StorageConfig(type=kind, options=options, cleanup=cleanup)


def _load_sweeper(sec: _Section) -> SweeperConfig:
    cfg = SweeperConfig(
        enabled=sec.boolean("enabled", False),
        retention_days=sec.number("retention_days", DEFAULT_RETENTION_DAYS, minimum=0.0),
        interval=sec.duration("interval", DEFAULT_SWEEP_INTERVAL, minimum=1.0),
        first_interval=sec.duration("first_interval", DEFAULT_SWEEP_FIRST_INTERVAL),
        lock_duration=sec.duration("lock_duration", DEFAULT_SWEEP_LOCK_DURATION),
        release_duration=sec.duration("release_duration", DEFAULT_SWEEP_LOCK_DURATION),
        retention_load_cutoff_duration=sec.duration("retention_load_cutoff_duration", 0.0),
    )
    sec.done()
    if not (math.isfinite(cfg.retention_days) and cfg.retention_days > 0):
        raise ConfigError(
            "sweeper.retention_days: must be a finite number greater than 0, "
            f"got {cfg.retention_days:g}"
        )
    return cfg


def _check_retention(sweeper: SweeperConfig, cleanup: CleanupConfig) -> None:
    """The sweeper's retention must outlast a dead instance's leftover object (DESIGN §11).

    The cleaner keeps a dead instance's last object for ``remove_old_instances_interval``;
    a retention shorter than that sweeps the tombstones of deletes made after that object
    while it can still be merged. The sweeper without cleanup is accepted: an object older
    than the retention (minus the load cutoff) is never merged, so leftovers stay inert.
    """
    if not (sweeper.enabled and cleanup.enabled):
        return
    if sweeper.retention < cleanup.remove_old_instances_interval:
        raise ConfigError(
            f"sweeper.retention_days: {sweeper.retention_days:g} days is shorter than "
            "storage.cleanup.remove_old_instances_interval "
            f"({cleanup.remove_old_instances_interval / 3600:g}h): a dead instance's last "
            "object would outlive the tombstones of later deletes"
        )


def _check_force_interval(sweeper: SweeperConfig, force: float) -> None:
    """With the sweeper on, objects older than the retention (minus the load cutoff) are
    never merged: a writer must store a fresh object now and then, or instances started
    later could never load a quiet writer's data. (An interval longer than the retention
    is left to the operator: only test set-ups shrink the retention below hours.)"""
    if sweeper.enabled and not force:
        limit = sweeper.retention - sweeper.load_cutoff
        raise ConfigError(
            "storage_force_snapshot_interval: 0 (off) with the sweeper on; it must be at most "
            f"the retention minus the load cutoff ({limit / 86400:g} days), or a quiet "
            "writer's objects grow too old to be merged"
        )


def _load_deltas(sec: _Section) -> DeltasConfig:
    cfg = DeltasConfig(
        enabled=sec.boolean("enabled", True),
        max_chain=sec.integer("max_chain", DEFAULT_DELTA_MAX_CHAIN, minimum=1),
        max_chain_ratio=sec.number("max_chain_ratio", DEFAULT_DELTA_MAX_CHAIN_RATIO, minimum=0.0),
        full_interval=sec.duration("full_interval", DEFAULT_DELTA_FULL_INTERVAL, minimum=1.0),
    )
    sec.done()
    if not math.isfinite(cfg.max_chain_ratio):
        raise ConfigError(
            f"deltas.max_chain_ratio: must be a finite number, got {cfg.max_chain_ratio:g}"
        )
    return cfg


def _load_lightningstream(sec: _Section) -> LightningStreamConfig:
    only = sec.boolean("only", False)
    write_given = sec.has("write")
    cfg = LightningStreamConfig(
        read=sec.boolean("read", True),
        write=sec.boolean("write", False),
        write_interval=sec.duration(
            "write_interval", DEFAULT_LS_WRITE_INTERVAL, minimum=MIN_POLL_INTERVAL
        ),
        only=only,
    )
    sec.done()
    if only and not cfg.read:
        raise ConfigError(
            "lightningstream.read: must not be false with lightningstream.only "
            "(an LS instance reads .pb.gz objects)"
        )
    if only and write_given and not cfg.write:
        raise ConfigError(
            "lightningstream.write: must not be false with lightningstream.only "
            "(an LS instance writes .pb.gz objects)"
        )
    return cfg


def _valid_mqtt_url(url: str) -> bool:
    parts = urlsplit(url)
    try:
        port = parts.port  # raises on a port out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("mqtt", "mqtts") and bool(parts.hostname) and port != 0


def _existing_file(sec: _Section, name: str) -> str | None:
    path = sec.optional_string(name)
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"{sec.key(name)}: {path!r} not found")
    return path


# What botocore accepts (it validates before sending): legacy names may hold capitals
# and '_', but never spaces or '/'.
_BUCKET_RE = re.compile(r"^[a-zA-Z0-9.\-_]{3,255}$")
_REGION_RE = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?$")


def _check_s3_options(options: S3Options) -> None:
    """What botocore would refuse with a traceback, or on every request, refused here."""
    if len(options.bucket) < 3:
        raise ConfigError(f"storage.options.bucket: {options.bucket!r} is too short")
    if not _BUCKET_RE.match(options.bucket):
        raise ConfigError(f"storage.options.bucket: {options.bucket!r} is not a valid bucket name")
    if not _REGION_RE.match(options.region):
        raise ConfigError(f"storage.options.region: {options.region!r} is not a valid region name")
    url = options.endpoint_url
    if url is not None:
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises on a bad port
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(
                f"storage.options.endpoint_url: expected a URL like http://host:port, got {url!r}"
            )


def _load_mqtt(sec: _Section) -> MqttConfig:
    url = sec.string("url", required=True)
    if not _valid_mqtt_url(url):
        raise ConfigError(f"{sec.key('url')}: expected mqtt://host[:port] or mqtts://host[:port]")
    if "@" in urlsplit(url).netloc:
        raise ConfigError(
            f"{sec.key('url')}: put the user name and password in notify.mqtt.username and "
            "password (or ${VARS}), not in the URL"
        )
    topic_raw = sec.raw("topic")
    if topic_raw is None:
        topics: tuple[str, ...] = (DEFAULT_MQTT_TOPIC,)
    elif isinstance(topic_raw, str) and topic_raw:
        topics = (topic_raw,)
    elif (
        isinstance(topic_raw, list)
        and topic_raw
        and all(isinstance(t, str) and t for t in topic_raw)
    ):
        topics = tuple(topic_raw)
    else:
        raise ConfigError(f"{sec.key('topic')}: expected a topic or a list of topics")
    qos = sec.integer("qos", 1, minimum=0)
    if qos > 2:
        raise ConfigError(f"{sec.key('qos')}: must be 0, 1 or 2, got {qos}")
    tsec = sec.section("tls")
    tls = MqttTls(
        ca_file=_existing_file(tsec, "ca_file"),
        cert_file=_existing_file(tsec, "cert_file"),
        key_file=_existing_file(tsec, "key_file"),
        insecure=tsec.boolean("insecure", False),
    )
    tsec.done()
    protocol = sec.integer("protocol", 4)
    if protocol not in (4, 5):
        raise ConfigError(f"{sec.key('protocol')}: must be 4 (MQTT 3.1.1) or 5 (MQTT 5)")
    cfg = MqttConfig(
        url=url,
        topics=topics,
        qos=qos,
        username=sec.optional_string("username"),
        password=sec.optional_string("password"),
        tls=tls,
        publish=sec.boolean("publish", False),
        protocol=protocol,
        inline_max_bytes=_inline_max_bytes(sec),
    )
    sec.done()
    return cfg


def _inline_max_bytes(sec: _Section) -> int:
    """notify.mqtt.inline_max_bytes: a size, 0 (off) up to what a message can carry."""
    size = sec.size("inline_max_bytes", DEFAULT_MQTT_INLINE_MAX_BYTES)
    if size > MAX_MQTT_INLINE_BYTES:
        raise ConfigError(
            f"{sec.key('inline_max_bytes')}: must be at most {MAX_MQTT_INLINE_BYTES >> 10}KB "
            f"(it travels base64-encoded in a message of at most 256KB), got {size} bytes"
        )
    return size


def _load_notify(sec: _Section) -> NotifyConfig:
    watch = sec.boolean("watch_lmdb", True)
    listing = (
        sec.duration("listing_interval", 0.0, minimum=MIN_POLL_INTERVAL)
        if sec.has("listing_interval")
        else None
    )
    mqtt = _load_mqtt(sec.section("mqtt")) if sec.has("mqtt") else None
    sqs = None
    if sec.has("sqs"):
        ssec = sec.section("sqs")
        sqs = SqsConfig(
            queue_url=ssec.string("queue_url", required=True),
            region=ssec.string("region", DEFAULT_S3_REGION),
            endpoint_url=ssec.optional_string("endpoint_url"),
        )
        ssec.done()
    sec.done()
    return NotifyConfig(watch_lmdb=watch, listing_interval=listing, mqtt=mqtt, sqs=sqs)


def _load_check(hsec: _Section, defaults: tuple[float, float, float]) -> dict[str, float]:
    values = {
        "interval": max(1.0, hsec.duration("interval", defaults[0])),
        "warn_duration": hsec.duration("warn_duration", defaults[1]),
        "error_duration": hsec.duration("error_duration", defaults[2]),
    }
    if values["error_duration"] < values["warn_duration"]:
        raise ConfigError(f"{hsec.key('error_duration')}: must not be shorter than warn_duration")
    return values


def _load_health(sec: _Section) -> HealthConfig:
    checks: dict[str, HealthCheckConfig] = {}
    for name in ("storage_list", "storage_load", "storage_store", "notify"):
        hsec = sec.section(name)
        checks[name] = HealthCheckConfig(**_load_check(hsec, DEFAULT_HEALTH))
        hsec.done()
    ssec = sec.section("start")
    start = StartHealthConfig(
        **_load_check(ssec, DEFAULT_START_HEALTH),
        report_healthz=ssec.boolean("report_healthz", True),
        report_metadata=ssec.boolean("report_metadata", True),
    )
    ssec.done()
    sec.done()
    return HealthConfig(start=start, **checks)


def _load_log(sec: _Section) -> LogConfig:
    cfg = LogConfig(
        level=sec.choice("level", "info", LOG_LEVELS),
        format=sec.choice("format", "human", LOG_FORMATS),
        timestamp=sec.choice("timestamp", "short", ("short", "disable", "full")),
    )
    sec.done()
    return cfg


def _load_http(sec: _Section) -> str:
    address = sec.string("address", "")
    sec.done()
    if address and not re.match(r"^(\[[0-9a-fA-F:.]+\]|[^:\[\]]*):\d{1,5}$", address):
        raise ConfigError(f"http.address: expected host:port, got {address!r}")
    return address


def _load_lmdbs(sec: _Section) -> dict[str, LmdbConfig]:
    lmdbs_raw = sec.raw("lmdbs")
    if lmdbs_raw is not None and not isinstance(lmdbs_raw, dict):
        raise ConfigError(f"lmdbs: expected a mapping, got {type(lmdbs_raw).__name__}")
    if not lmdbs_raw:
        raise sec.missing("lmdbs", " (at least one db is needed)")
    lmdbs = {}
    for name, ldata in lmdbs_raw.items():
        key = f"lmdbs.{name}"
        validate_db_name(str(name), key)
        lmdbs[str(name)] = _load_lmdb(str(name), ldata, key)
    return lmdbs


def config_from_dict(data: object, *, instance: str | None = None) -> Config:
    """Validate parsed YAML into a :class:`Config`; ``instance`` overrides the file's."""
    sec = _Section(data, "")
    inst_raw = sec.string("instance", "")
    inst = instance or inst_raw or sanitize_instance(socket.gethostname())
    validate_instance(inst, "--instance" if instance else "instance")

    lmdbs = _load_lmdbs(sec)

    if not sec.has("storage"):
        raise sec.missing("storage")
    storage = _load_storage(sec.raw("storage"))

    force = sec.duration("storage_force_snapshot_interval", DEFAULT_FORCE_SNAPSHOT_INTERVAL)
    if 0 < force < MIN_FORCE_SNAPSHOT_INTERVAL:
        raise ConfigError(
            f"storage_force_snapshot_interval: must be 0 (off) or at least 1m, got {force:g}s"
        )
    for noop in LS_ACCEPTED_NOOP_KEYS:
        sec.raw(noop)
    sweeper = _load_sweeper(sec.section("sweeper"))
    _check_retention(sweeper, storage.cleanup)
    _check_force_interval(sweeper, force)
    cfg = Config(
        instance=inst,
        lmdbs=lmdbs,
        storage=storage,
        lmdb_poll_interval=sec.duration(
            "lmdb_poll_interval", DEFAULT_LMDB_POLL_INTERVAL, minimum=MIN_POLL_INTERVAL
        ),
        storage_poll_interval=sec.duration(
            "storage_poll_interval", DEFAULT_STORAGE_POLL_INTERVAL, minimum=MIN_POLL_INTERVAL
        ),
        storage_retry_interval=sec.duration(
            "storage_retry_interval", DEFAULT_STORAGE_RETRY_INTERVAL, minimum=MIN_POLL_INTERVAL
        ),
        storage_retry_count=sec.integer(
            "storage_retry_count", DEFAULT_STORAGE_RETRY_COUNT, minimum=1
        ),
        storage_retry_forever=sec.boolean("storage_retry_forever", False),
        storage_force_snapshot_interval=force,
        storage_max_inflated_size=sec.size(
            "storage_max_inflated_size",
            DEFAULT_STORAGE_MAX_INFLATED_SIZE,
            minimum=MIN_STORAGE_MAX_INFLATED_SIZE,
        ),
        only_once=sec.boolean("only_once", False),
        clock_skew_threshold=sec.duration("clock_skew_threshold", DEFAULT_CLOCK_SKEW_THRESHOLD),
        sweeper=sweeper,
        deltas=_load_deltas(sec.section("deltas")),
        lightningstream=_load_lightningstream(sec.section("lightningstream")),
        notify=_load_notify(sec.section("notify")),
        http_address=_load_http(sec.section("http")),
        log=_load_log(sec.section("log")),
        health=_load_health(sec.section("health")),
    )
    sec.done()
    return cfg


def _read_config(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config: file {str(p)!r} not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config: cannot read {str(p)!r}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"config: cannot read {str(p)!r}: {exc.strerror}") from None


def load_config(path: str | os.PathLike[str], *, instance: str | None = None) -> Config:
    """Read, expand and validate a config file."""
    p = Path(path)
    return load_config_text(_read_config(p), instance=instance, source=str(p))


def load_lmdb_configs(path: str | os.PathLike[str]) -> dict[str, LmdbConfig]:
    """Only the ``lmdbs`` section of a config file, for commands that read the local
    LMDBs alone: ``${ENV}`` is expanded there only, so an unset ``${S3_ACCESS_KEY}``
    elsewhere does not matter, and the other sections are not checked."""
    p = Path(path)
    data = _parse_yaml(_read_config(p), str(p))
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping, got {type(data).__name__}")
    return _load_lmdbs(_Section({"lmdbs": expand_tree(data.get("lmdbs"))}, ""))


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice is an error (as LS's strict unmarshal):
    otherwise the last one silently wins and a pasted block overrides the real value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config_text(text: str, *, instance: str | None = None, source: str = "config") -> Config:
    """Parse YAML text, expand ``${ENV}`` in its values, and validate it."""
    return config_from_dict(expand_tree(_parse_yaml(text, source)), instance=instance)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except RecursionError:
        raise ConfigError(f"config: {source}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config: {source}{where}: invalid YAML: {problem}") from None


def default_config_path() -> str:
    """``$EVSYNC_CONFIG`` when set, else ``evsync.yaml``."""
    return os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_FILE
