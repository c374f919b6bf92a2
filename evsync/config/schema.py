"""The validated config as frozen dataclasses, with every default as a named constant.

Keys follow Lightning Stream (DESIGN §8) so that an LS config mostly works as is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evsync.config.masking import mask
from evsync.config.values import validate_instance

DEFAULT_LMDB_POLL_INTERVAL = 1.0
MIN_POLL_INTERVAL = 0.01
DEFAULT_STORAGE_POLL_INTERVAL = 1.0
DEFAULT_STORAGE_RETRY_INTERVAL = 5.0
DEFAULT_STORAGE_RETRY_COUNT = 100
DEFAULT_FORCE_SNAPSHOT_INTERVAL = 4 * 3600.0
MIN_FORCE_SNAPSHOT_INTERVAL = 60.0
DEFAULT_LISTING_INTERVAL_WITH_PUSH = 60.0
DEFAULT_MAP_SIZE_ON_CREATE = 1 << 30
DEFAULT_MAX_DBS = 64
# S3: how long to wait for a TCP connection (LS's dial_timeout), and for each read of a
# response; a server that stalls longer fails the request, and evsync's retries take over.
DEFAULT_S3_DIAL_TIMEOUT = 10.0
DEFAULT_S3_READ_TIMEOUT = 60.0
# A remote object that inflates past this many bytes is rejected (DESIGN §4): its
# inflated size is about its LMDB's data (values without headers, ~20 bytes more per
# entry). PowerDNS LMDBs hold a few GB; 64 GiB leaves room for far bigger ones, and a
# decompression bomb costs at most that much reading (~30 s of CPU), once.
DEFAULT_STORAGE_MAX_INFLATED_SIZE = 64 << 30
MIN_STORAGE_MAX_INFLATED_SIZE = 1 << 20
DEFAULT_CLEANUP_INTERVAL = 300.0
DEFAULT_MUST_KEEP_INTERVAL = 600.0
DEFAULT_REMOVE_OLD_INSTANCES_INTERVAL = 168 * 3600.0
DEFAULT_RETENTION_DAYS = 370.0
DEFAULT_SWEEP_INTERVAL = 6 * 3600.0
DEFAULT_SWEEP_FIRST_INTERVAL = 600.0
DEFAULT_SWEEP_LOCK_DURATION = 0.05
DEFAULT_MQTT_TOPIC = "evsync"
DEFAULT_MQTT_INLINE_MAX_BYTES = 64 << 10
# An inline object travels base64-encoded (4/3 its size) in a JSON message that the
# parser caps at 256 KiB (triggers/s3events.py); past this it would not fit with room
# to spare for the envelope.
MAX_MQTT_INLINE_BYTES = 128 << 10
DEFAULT_S3_REGION = "us-east-1"
DEFAULT_HEALTH = (5.0, 60.0, 300.0)  # interval, warn_duration, error_duration
DEFAULT_START_HEALTH = (1.0, 60.0, 300.0)  # LS health.start
# A remote object stamped further ahead of the local clock than this is logged and counted:
# its writer's clock is ahead, so its writes win conflicts they should lose.
DEFAULT_CLOCK_SKEW_THRESHOLD = 1.0
# Deltas (DESIGN §7): a full object is written when the chain since the last one has
# this many deltas, when the deltas add up to this share of the full object's size, or
# when the full object is this old (which also heals a receiver that missed a delta).
DEFAULT_DELTA_MAX_CHAIN = 20
DEFAULT_DELTA_MAX_CHAIN_RATIO = 0.5
DEFAULT_DELTA_FULL_INTERVAL = 600.0
# Lightning Stream interop (docs/lightningstream.md): at most one full .pb.gz per this
# interval, as LS itself polls its LMDB once a second.
DEFAULT_LS_WRITE_INTERVAL = 1.0
# S3 option use_update_marker (as LS's simpleblob): LS lists again at least this often.
DEFAULT_UPDATE_MARKER_FORCE_LIST_INTERVAL = 300.0

LOG_LEVELS = ("debug", "info", "warning", "error", "fatal")
LOG_FORMATS = ("human", "logfmt", "json")


@dataclass(frozen=True)
class LmdbOptions:
    """How to open one LMDB environment (LS ``lmdbs.<db>.options``)."""

    no_subdir: bool = False
    create: bool = False
    map_size: int = 0
    max_dbs: int = DEFAULT_MAX_DBS


@dataclass(frozen=True)
class DbiOptions:
    """Per-DBI overrides (LS ``dbi_options.<dbi>``)."""

    override_create_flags: int | None = None


@dataclass(frozen=True)
class LmdbConfig:
    """One synced LMDB (a "db"): its name is part of every object name."""

    name: str
    path: str
    schema_tracks_changes: bool = False
    dupsort_hack: bool = False
    options: LmdbOptions = field(default_factory=LmdbOptions)
    dbi_options: Mapping[str, DbiOptions] = field(default_factory=dict)

    @property
    def data_file(self) -> Path:
        """The LMDB data file that the watcher observes."""
        p = Path(self.path)
        return p if self.options.no_subdir else p / "data.mdb"


@dataclass(frozen=True)
class S3Options:
    """Options of the ``s3`` storage backend."""

    bucket: str
    endpoint_url: str | None = None
    region: str = DEFAULT_S3_REGION
    access_key: str | None = None
    secret_key: str | None = None
    global_prefix: str = ""
    create_bucket: bool = False
    dial_timeout: float = DEFAULT_S3_DIAL_TIMEOUT
    read_timeout: float = DEFAULT_S3_READ_TIMEOUT
    #: LS's simpleblob option: every store and delete also rewrites ``update-marker``
    use_update_marker: bool = False
    update_marker_force_list_interval: float = DEFAULT_UPDATE_MARKER_FORCE_LIST_INTERVAL


@dataclass(frozen=True)
class FsOptions:
    """Options of the ``fs`` storage backend: a directory used as the bucket."""

    root_path: str
    watch: bool = True


@dataclass(frozen=True)
class MemoryOptions:
    """The ``memory`` backend has no options; it lives and dies with the process."""


StorageOptions = S3Options | FsOptions | MemoryOptions


@dataclass(frozen=True)
class CleanupConfig:
    """Snapshot cleanup (LS ``storage.cleanup``); on by default, unlike LS."""

    enabled: bool = True
    interval: float = DEFAULT_CLEANUP_INTERVAL
    must_keep_interval: float = DEFAULT_MUST_KEEP_INTERVAL
    remove_old_instances_interval: float = DEFAULT_REMOVE_OLD_INSTANCES_INTERVAL


@dataclass(frozen=True)
class StorageConfig:
    """Where snapshot objects live."""

    type: str
    options: StorageOptions
    cleanup: CleanupConfig = field(default_factory=CleanupConfig)


@dataclass(frozen=True)
class SweeperConfig:
    """Tombstone sweeper (LS ``sweeper``); off by default as in LS."""

    enabled: bool = False
    retention_days: float = DEFAULT_RETENTION_DAYS
    interval: float = DEFAULT_SWEEP_INTERVAL
    first_interval: float = DEFAULT_SWEEP_FIRST_INTERVAL
    lock_duration: float = DEFAULT_SWEEP_LOCK_DURATION
    release_duration: float = DEFAULT_SWEEP_LOCK_DURATION
    retention_load_cutoff_duration: float = 0.0

    @property
    def retention(self) -> float:
        """The retention in seconds."""
        return self.retention_days * 86400.0

    @property
    def load_cutoff(self) -> float:
        """Seconds subtracted from the retention when skipping stale remote tombstones."""
        cutoff = self.retention_load_cutoff_duration or 0.01 * self.retention
        return min(cutoff, 0.75 * self.retention)


@dataclass(frozen=True)
class DeltasConfig:
    """Delta objects (evsync only): when a change uploads only what changed."""

    enabled: bool = True
    max_chain: int = DEFAULT_DELTA_MAX_CHAIN
    max_chain_ratio: float = DEFAULT_DELTA_MAX_CHAIN_RATIO
    full_interval: float = DEFAULT_DELTA_FULL_INTERVAL


@dataclass(frozen=True)
class LightningStreamConfig:
    """Lightning Stream interop (docs/lightningstream.md): which ``.pb.gz`` objects are
    read and written beside evsync's own ``.evs.zst``."""

    #: merge LS's ``.pb.gz`` objects (newest per instance), as LS does
    read: bool = True
    #: also store full ``.pb.gz`` snapshots, which LS instances merge
    write: bool = False
    #: at most one ``.pb.gz`` per this many seconds; changes in between coalesce
    write_interval: float = DEFAULT_LS_WRITE_INTERVAL
    #: for tests and migration rehearsals: behave as an LS instance would, reading and
    #: writing only ``.pb.gz`` (no ``.evs.zst`` at all); implies ``write``
    only: bool = False

    @property
    def writes(self) -> bool:
        """True when this instance stores ``.pb.gz`` objects."""
        return self.write or self.only


@dataclass(frozen=True)
class MqttTls:
    """TLS material for ``mqtts://``; empty means the system CAs."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class MqttConfig:
    """An MQTT broker that delivers S3 events and peer announcements."""

    url: str
    topics: tuple[str, ...] = (DEFAULT_MQTT_TOPIC,)
    qos: int = 1
    username: str | None = None
    password: str | None = None
    tls: MqttTls = field(default_factory=MqttTls)
    publish: bool = False
    protocol: int = 4  # 4 = MQTT 3.1.1, 5 = MQTT 5
    #: deltas up to this size travel inside a companion of the announcement (sent with
    #: ``publish``, merged when received); 0 = off (DESIGN §1, §7)
    inline_max_bytes: int = DEFAULT_MQTT_INLINE_MAX_BYTES


@dataclass(frozen=True)
class SqsConfig:
    """An SQS queue that receives S3 events (directly or through SNS)."""

    queue_url: str
    region: str = DEFAULT_S3_REGION
    endpoint_url: str | None = None


@dataclass(frozen=True)
class NotifyConfig:
    """Event sources that wake the syncer (evsync's addition to the LS keys)."""

    watch_lmdb: bool = True
    listing_interval: float | None = None
    mqtt: MqttConfig | None = None
    sqs: SqsConfig | None = None


@dataclass(frozen=True)
class HealthCheckConfig:
    """Thresholds of one health check: continuous failure for warn/error durations."""

    interval: float = DEFAULT_HEALTH[0]
    warn_duration: float = DEFAULT_HEALTH[1]
    error_duration: float = DEFAULT_HEALTH[2]


@dataclass(frozen=True)
class StartHealthConfig(HealthCheckConfig):
    """LS ``health.start``: how long startup may take; evsync reports it by default."""

    interval: float = DEFAULT_START_HEALTH[0]
    warn_duration: float = DEFAULT_START_HEALTH[1]
    error_duration: float = DEFAULT_START_HEALTH[2]
    report_healthz: bool = True
    report_metadata: bool = True


@dataclass(frozen=True)
class HealthConfig:
    """Health thresholds per storage operation (LS ``health``), startup and push sources."""

    storage_list: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    storage_load: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    storage_store: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    start: StartHealthConfig = field(default_factory=StartHealthConfig)
    notify: HealthCheckConfig = field(default_factory=HealthCheckConfig)


@dataclass(frozen=True)
class LogConfig:
    """Logging level and format."""

    level: str = "info"
    format: str = "human"
    timestamp: str = "short"


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration."""

    instance: str
    lmdbs: Mapping[str, LmdbConfig]
    storage: StorageConfig
    lmdb_poll_interval: float = DEFAULT_LMDB_POLL_INTERVAL
    storage_poll_interval: float = DEFAULT_STORAGE_POLL_INTERVAL
    storage_retry_interval: float = DEFAULT_STORAGE_RETRY_INTERVAL
    storage_retry_count: int = DEFAULT_STORAGE_RETRY_COUNT
    storage_retry_forever: bool = False
    storage_force_snapshot_interval: float = DEFAULT_FORCE_SNAPSHOT_INTERVAL
    storage_max_inflated_size: int = DEFAULT_STORAGE_MAX_INFLATED_SIZE
    only_once: bool = False
    clock_skew_threshold: float = DEFAULT_CLOCK_SKEW_THRESHOLD
    sweeper: SweeperConfig = field(default_factory=SweeperConfig)
    deltas: DeltasConfig = field(default_factory=DeltasConfig)
    lightningstream: LightningStreamConfig = field(default_factory=LightningStreamConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    http_address: str = ""
    log: LogConfig = field(default_factory=LogConfig)
    health: HealthConfig = field(default_factory=HealthConfig)

    @property
    def listing_interval(self) -> float:
        """Seconds between fallback listings (DESIGN §8)."""
        if self.notify.listing_interval is not None:
            return self.notify.listing_interval
        if self.notify.mqtt is not None or self.notify.sqs is not None:
            return DEFAULT_LISTING_INTERVAL_WITH_PUSH
        return self.storage_poll_interval

    def with_instance(self, instance: str) -> Config:
        """A copy with another instance name (the ``-i`` flag), validated."""
        return dataclasses.replace(self, instance=validate_instance(instance, "--instance"))

    def masked(self) -> dict[str, Any]:
        """The config as plain data with every secret replaced by ``***``."""
        masked: dict[str, Any] = mask(dataclasses.asdict(self))
        return masked
