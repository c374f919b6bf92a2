"""Config loading (DESIGN §8): defaults, validation messages, ${ENV}, masking, value syntax."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from evsync.config import (
    Config,
    FsOptions,
    S3Options,
    expand_env,
    load_config,
    load_config_text,
    parse_duration,
    parse_size,
)
from evsync.errors import ConfigError

MINIMAL = """\
instance: node-1
lmdbs:
  main:
    path: /var/lib/evsync/main
    schema_tracks_changes: true
storage:
  type: memory
"""

S3 = """\
instance: node-1
lmdbs:
  main:
    path: /data/main
    schema_tracks_changes: true
storage:
  type: s3
  options:
    bucket: my-bucket
    access_key: AKIAEXAMPLE
    secret_key: s3cr3t-value
    region: eu-west-1
notify:
  mqtt:
    url: mqtt://broker:1883
    username: mqtt-user
    password: mqtt-pass
"""


def load(text: str, **kwargs: str) -> Config:
    """load_config_text on dedented text."""
    return load_config_text(textwrap.dedent(text), **kwargs)


def error(text: str, **kwargs: str) -> str:
    """The ConfigError message of a config that must fail; it must be one line."""
    with pytest.raises(ConfigError) as info:
        load(text, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def with_lmdb(extra: str = "", options: str = "", top: str = "") -> str:
    """A config with extra lines under lmdbs.main, lmdbs.main.options and the top level."""
    lines = [
        "instance: node-1",
        "lmdbs:",
        "  main:",
        "    path: /data/main",
        "    schema_tracks_changes: true",
    ]
    lines += [f"    {line}" for line in extra.splitlines() if line]
    if options:
        lines.append("    options:")
        lines += [f"      {line}" for line in options.splitlines() if line]
    lines += ["storage:", "  type: memory"]
    lines += [line for line in top.splitlines() if line]
    return "\n".join(lines) + "\n"


class TestMinimal:
    """A minimal config loads with the given values."""

    def test_minimal_loads(self) -> None:
        """instance, one db and a storage type are enough."""
        cfg = load(MINIMAL)
        assert cfg.instance == "node-1"
        assert list(cfg.lmdbs) == ["main"]
        lmdb = cfg.lmdbs["main"]
        assert lmdb.name == "main"
        assert lmdb.path == "/var/lib/evsync/main"
        assert lmdb.schema_tracks_changes
        assert cfg.storage.type == "memory"

    def test_load_config_from_file(self, tmp_path: Path) -> None:
        """load_config reads a file."""
        path = tmp_path / "evsync.yaml"
        path.write_text(MINIMAL, encoding="utf-8")
        assert load_config(path).instance == "node-1"

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing config file is a ConfigError naming the file."""
        with pytest.raises(ConfigError, match=r"nope\.yaml"):
            load_config(tmp_path / "nope.yaml")

    def test_s3_and_fs_options(self) -> None:
        """S3 and fs storage options are read into their dataclasses."""
        s3 = load(S3).storage.options
        assert isinstance(s3, S3Options)
        assert (s3.bucket, s3.region, s3.access_key) == ("my-bucket", "eu-west-1", "AKIAEXAMPLE")
        fs = load(MINIMAL.replace("type: memory", "type: fs\n  options:\n    root_path: /b"))
        assert isinstance(fs.storage.options, FsOptions)
        assert fs.storage.options.root_path == "/b"


class TestDefaults:
    """Unset keys take LS's defaults."""

    def test_intervals_and_counts(self) -> None:
        """poll 1s, retry 5s x 100, forced snapshot every 4h."""
        cfg = load(MINIMAL)
        assert cfg.lmdb_poll_interval == 1.0
        assert cfg.storage_retry_interval == 5.0
        assert cfg.storage_retry_count == 100
        assert cfg.storage_force_snapshot_interval == 4 * 3600.0

    def test_lmdb_options(self) -> None:
        """max_dbs defaults to 64; map_size to 0 (keep the file's) without create."""
        options = load(MINIMAL).lmdbs["main"].options
        assert options.max_dbs == 64
        assert options.map_size == 0
        assert not options.create

    def test_map_size_default_on_create(self) -> None:
        """With create and no map_size, map_size is 1 GiB."""
        options = load(with_lmdb(options="create: true")).lmdbs["main"].options
        assert options.create
        assert options.map_size == 1 << 30

    def test_explicit_map_size_kept_on_create(self) -> None:
        """An explicit map_size wins over the create default."""
        options = load(with_lmdb(options="create: true\nmap_size: 256MB")).lmdbs["main"].options
        assert options.map_size == 256 << 20

    def test_listing_interval_without_push(self) -> None:
        """Without MQTT or SQS, the listing interval is storage_poll_interval (1s)."""
        assert load(MINIMAL).listing_interval == 1.0
        cfg = load(with_lmdb(top="storage_poll_interval: 7s"))
        assert cfg.listing_interval == 7.0

    def test_listing_interval_with_mqtt(self) -> None:
        """With notify.mqtt set, the listing interval defaults to 60s."""
        cfg = load(with_lmdb(top="notify:\n  mqtt:\n    url: mqtt://broker"))
        assert cfg.listing_interval == 60.0

    def test_listing_interval_with_sqs(self) -> None:
        """With notify.sqs set, the listing interval defaults to 60s."""
        cfg = load(with_lmdb(top="notify:\n  sqs:\n    queue_url: https://sqs.example/q"))
        assert cfg.listing_interval == 60.0

    def test_explicit_listing_interval_wins(self) -> None:
        """notify.listing_interval wins over both defaults."""
        top = "storage_poll_interval: 3s\nnotify:\n  listing_interval: 15s\n  mqtt:\n    url: mqtt://b"
        assert load(with_lmdb(top=top)).listing_interval == 15.0

    def test_watch_lmdb_default(self) -> None:
        """notify.watch_lmdb defaults to true."""
        assert load(MINIMAL).notify.watch_lmdb is True


class TestKeyErrors:
    """Each error names the key and the problem in one line."""

    def test_missing_path(self) -> None:
        """A db without a path fails with 'lmdbs.main.path: missing'."""
        text = MINIMAL.replace("    path: /var/lib/evsync/main\n", "")
        assert "path" not in text
        assert error(text).startswith("lmdbs.main.path: missing")

    def test_unknown_top_level_key(self) -> None:
        """An unknown top-level key is named."""
        assert error(with_lmdb(top="bogus_key: 1")).startswith("bogus_key: unknown key")

    def test_unknown_nested_key(self) -> None:
        """A misspelt key under storage.options is named with its full path."""
        text = S3.replace("bucket: my-bucket", "bucket: my-bucket\n    bukket: typo")
        assert error(text).startswith("storage.options.bukket: unknown key")

    def test_unknown_lmdb_option(self) -> None:
        """An unknown key under lmdbs.main.options is named with its full path."""
        assert error(with_lmdb(options="mapsize: 1GB")).startswith(
            "lmdbs.main.options.mapsize: unknown key"
        )

    def test_bad_duration(self) -> None:
        """A bad duration names the key."""
        message = error(with_lmdb(top="lmdb_poll_interval: soon"))
        assert message.startswith("lmdb_poll_interval:")
        assert "duration" in message

    def test_bad_size(self) -> None:
        """A bad size names the key."""
        message = error(with_lmdb(options="map_size: lots"))
        assert message.startswith("lmdbs.main.options.map_size:")
        assert "size" in message

    def test_bad_bool(self) -> None:
        """A non-boolean for a boolean key names the key."""
        message = error(with_lmdb(options="create: maybe"))
        assert message.startswith("lmdbs.main.options.create:")

    def test_quoted_bool_is_not_bool(self) -> None:
        """A quoted "true" is a string, not a YAML boolean."""
        assert error(with_lmdb(options='create: "true"')).startswith("lmdbs.main.options.create:")

    def test_missing_storage(self) -> None:
        """A config without storage says so."""
        text = "lmdbs:\n  main:\n    path: /x\n    schema_tracks_changes: true\n"
        assert error(text).startswith("storage")

    def test_missing_lmdbs(self) -> None:
        """A config without any db says so."""
        assert error("instance: a\nstorage:\n  type: memory\n").startswith("lmdbs")


class TestNames:
    """Instance and db names must fit into object names."""

    @pytest.mark.parametrize("name", ["node_1", "a/b", "with space", "ä"])
    def test_bad_instance(self, name: str) -> None:
        """An instance with '_', '/', a space or non-ASCII is rejected."""
        assert error(MINIMAL.replace("node-1", f'"{name}"')).startswith("instance:")

    @pytest.mark.parametrize("name", ["my_db", "Main", "a/b"])
    def test_bad_db_name(self, name: str) -> None:
        """A db name with '_', uppercase or '/' is rejected, naming the db key."""
        message = error(MINIMAL.replace("  main:", f'  "{name}":'))
        assert message.startswith(f"lmdbs.{name}")

    def test_good_names(self) -> None:
        """Letters, digits and '-' are fine for instances; lowercase for dbs."""
        cfg = load(MINIMAL.replace("node-1", "Node-2-B").replace("  main:", "  db-2:"))
        assert cfg.instance == "Node-2-B"
        assert list(cfg.lmdbs) == ["db-2"]

    def test_instance_override(self) -> None:
        """instance= overrides the file's instance."""
        assert load(MINIMAL, instance="other-1").instance == "other-1"

    def test_instance_override_validated(self) -> None:
        """A bad instance= override is rejected, naming --instance."""
        assert error(MINIMAL, instance="bad_name").startswith("--instance:")

    def test_with_instance_validated(self) -> None:
        """Config.with_instance validates the new name."""
        cfg = load(MINIMAL)
        assert cfg.with_instance("x-1").instance == "x-1"
        with pytest.raises(ConfigError):
            cfg.with_instance("x/1")


class TestEnvExpansion:
    """${VAR}, ${VAR:-default} and $$ in the YAML text."""

    def test_env_var(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """${VAR} is replaced by the environment value."""
        monkeypatch.setenv("EVSYNC_TEST_PATH", "/from/env")
        cfg = load(MINIMAL.replace("/var/lib/evsync/main", "${EVSYNC_TEST_PATH}/main"))
        assert cfg.lmdbs["main"].path == "/from/env/main"

    def test_default_used_when_unset(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """${VAR:-default} gives the default when VAR is unset."""
        monkeypatch.delenv("EVSYNC_TEST_UNSET", raising=False)
        cfg = load(MINIMAL.replace("node-1", "${EVSYNC_TEST_UNSET:-fallback-1}"))
        assert cfg.instance == "fallback-1"

    def test_default_ignored_when_set(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """${VAR:-default} gives VAR when it is set."""
        monkeypatch.setenv("EVSYNC_TEST_INST", "set-1")
        cfg = load(MINIMAL.replace("node-1", "${EVSYNC_TEST_INST:-fallback-1}"))
        assert cfg.instance == "set-1"

    def test_unset_var_is_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An unset variable without a default is an error naming it."""
        monkeypatch.delenv("EVSYNC_TEST_MISSING", raising=False)
        message = error(MINIMAL.replace("node-1", "${EVSYNC_TEST_MISSING}"))
        assert "EVSYNC_TEST_MISSING" in message

    def test_dollar_dollar_literal(self) -> None:
        """$$ is a literal $ (and does not start a variable)."""
        cfg = load(MINIMAL.replace("/var/lib/evsync/main", "/data/a$$b/$${NOT_A_VAR}"))
        assert cfg.lmdbs["main"].path == "/data/a$b/${NOT_A_VAR}"

    def test_expand_env_direct(self) -> None:
        """expand_env uses the given mapping and leaves other text alone."""
        env = {"A": "1", "B": ""}
        assert expand_env("x${A}y${B}z${C:-3}$$", env) == "x1yz3$"
        assert expand_env("plain $HOME text", env) == "plain $HOME text"
        with pytest.raises(ConfigError, match="C"):
            expand_env("${C}", env)


    def test_comments_are_not_expanded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An unset variable inside a YAML comment does not fail the load."""
        monkeypatch.delenv("EVSYNC_TEST_COMMENTED", raising=False)
        cfg = load(MINIMAL + "# password: ${EVSYNC_TEST_COMMENTED}\n")
        assert cfg.instance == "node-1"

    def test_whole_reference_keeps_yaml_type(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A value that is one ${VAR} is read as YAML: true is a boolean, 5 an integer."""
        monkeypatch.setenv("EVSYNC_TEST_BOOL", "true")
        monkeypatch.setenv("EVSYNC_TEST_INT", "7")
        cfg = load(with_lmdb(options="create: ${EVSYNC_TEST_BOOL}",
                             top="storage_retry_count: ${EVSYNC_TEST_INT}"))
        assert cfg.lmdbs["main"].options.create is True
        assert cfg.storage_retry_count == 7

    @pytest.mark.parametrize("secret", ["0777", "12:30", "yes", "1e3", "null", "~", "[a]"])
    def test_a_reference_stays_the_string_it_is(
        self, monkeypatch: pytest.MonkeyPatch, secret: str
    ) -> None:
        """${VAR} substitutes text and is never read again as YAML: a password 0777 stays
        0777 (not octal 511), 12:30 stays 12:30 (not 750 minutes), yes stays yes."""
        monkeypatch.setenv("EVSYNC_TEST_SECRET", secret)
        cfg = load(S3.replace("s3cr3t-value", "${EVSYNC_TEST_SECRET}"))
        opts = cfg.storage.options
        assert isinstance(opts, S3Options)
        assert opts.secret_key == secret

    def test_yes_is_not_a_boolean(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A boolean key takes only true or false from the environment, as in the file."""
        monkeypatch.setenv("EVSYNC_TEST_BOOL", "yes")
        message = error(with_lmdb(options="create: ${EVSYNC_TEST_BOOL}"))
        assert message == "lmdbs.main.options.create: expected true or false, got 'yes'"


class TestMasking:
    """Secrets never appear when a config is printed."""

    def test_secrets_masked(self) -> None:
        """secret_key, access_key and the MQTT password are masked; the rest stays."""
        masked = load(S3).masked()
        options = masked["storage"]["options"]
        assert options["secret_key"] == "***"
        assert options["access_key"] == "***"
        assert masked["notify"]["mqtt"]["password"] == "***"
        assert options["bucket"] == "my-bucket"
        assert options["region"] == "eu-west-1"
        assert masked["notify"]["mqtt"]["username"] == "mqtt-user"
        assert masked["instance"] == "node-1"
        text = json.dumps(masked, default=str)
        for secret in ("AKIAEXAMPLE", "s3cr3t-value", "mqtt-pass"):
            assert secret not in text

    def test_masking_leaves_config_intact(self) -> None:
        """masked() does not change the Config itself."""
        cfg = load(S3)
        cfg.masked()
        assert isinstance(cfg.storage.options, S3Options)
        assert cfg.storage.options.secret_key == "s3cr3t-value"

    def test_unset_secret_not_masked(self) -> None:
        """An unset secret shows as unset, not as ***."""
        masked = load(MINIMAL.replace("memory", "s3\n  options:\n    bucket: bkt")).masked()
        assert masked["storage"]["options"]["secret_key"] is None


class TestValueSyntax:
    """LS's duration and size syntax."""

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("500ms", 0.5),
            ("1s", 1.0),
            ("5m", 300.0),
            ("1h30m", 5400.0),
            ("168h", 604800.0),
            ("1m30s500ms", 90.5),
            ("1.5s", 1.5),
            ("0", 0.0),
            (0, 0.0),
        ],
    )
    def test_durations(self, text: object, seconds: float) -> None:
        """Go-style durations parse to seconds."""
        assert parse_duration(text, "k") == pytest.approx(seconds)

    @pytest.mark.parametrize("text", ["", "5", "1x", "s", "1h 30m", "-1s", "ms500", 5, True])
    def test_bad_durations(self, text: object) -> None:
        """Malformed durations (including bare non-zero numbers) are rejected with the key."""
        with pytest.raises(ConfigError, match=r"^the\.key:"):
            parse_duration(text, "the.key")

    def test_duration_in_config(self) -> None:
        """A duration in the config is read in seconds."""
        cfg = load(
            with_lmdb(top="lmdb_poll_interval: 250ms\nstorage_force_snapshot_interval: 1h30m")
        )
        assert cfg.lmdb_poll_interval == 0.25
        assert cfg.storage_force_snapshot_interval == 5400.0

    @pytest.mark.parametrize(
        ("text", "size"),
        [
            ("256MB", 256 << 20),
            ("1GB", 1 << 30),
            ("1G", 1 << 30),
            ("64KiB", 64 << 10),
            ("512", 512),
            (4096, 4096),
            (0, 0),
        ],
    )
    def test_sizes(self, text: object, size: int) -> None:
        """Sizes with units (powers of 1024) and plain integers parse to bytes."""
        assert parse_size(text, "k") == size

    @pytest.mark.parametrize("text", ["lots", "1XB", "", "-5", -1, True, 1.5])
    def test_bad_sizes(self, text: object) -> None:
        """Malformed or negative sizes are rejected with the key."""
        with pytest.raises(ConfigError, match=r"^the\.key:"):
            parse_size(text, "the.key")

    def test_size_in_config(self) -> None:
        """An integer map_size in the config is taken as bytes."""
        options = load(with_lmdb(options="map_size: 1048576")).lmdbs["main"].options
        assert options.map_size == 1 << 20


class TestSemanticChecks:
    """Combinations that cannot work are rejected up front."""

    def test_shadow_mode_with_dupsort_hack(self) -> None:
        """schema_tracks_changes: false with dupsort_hack: true loads as shadow mode."""
        cfg = load_config_text(
            MINIMAL.replace(
                "schema_tracks_changes: true",
                "schema_tracks_changes: false\n    dupsort_hack: true",
            )
        )
        lmdb_cfg = cfg.lmdbs["main"]
        assert not lmdb_cfg.schema_tracks_changes and lmdb_cfg.dupsort_hack

    def test_shadow_mode_is_the_default(self) -> None:
        """Without schema_tracks_changes, a db is in shadow mode, as in Lightning Stream."""
        cfg = load_config_text(MINIMAL.replace("    schema_tracks_changes: true\n", ""))
        assert not cfg.lmdbs["main"].schema_tracks_changes

    def test_dupsort_hack_with_native(self) -> None:
        """dupsort_hack with schema_tracks_changes: true is an error naming dupsort_hack."""
        message = error(with_lmdb(extra="dupsort_hack: true"))
        assert message.startswith("lmdbs.main.dupsort_hack:")

    def test_access_key_without_secret(self) -> None:
        """An access_key without a secret_key is an error naming storage.options."""
        message = error(S3.replace("    secret_key: s3cr3t-value\n", ""))
        assert message.startswith("storage.options")
        assert "secret_key" in message

    def test_secret_without_access_key(self) -> None:
        """A secret_key without an access_key is an error too."""
        message = error(S3.replace("    access_key: AKIAEXAMPLE\n", ""))
        assert message.startswith("storage.options")

    def test_force_snapshot_too_short(self) -> None:
        """A forced-snapshot interval below 1m (but not 0) is rejected."""
        message = error(with_lmdb(top="storage_force_snapshot_interval: 10s"))
        assert message.startswith("storage_force_snapshot_interval:")


class TestYamlErrors:
    """Broken YAML gives one line with a line number."""

    def test_invalid_yaml(self) -> None:
        """A syntax error reports 'line N' of the offending line."""
        text = "instance: a\nlmdbs:\n  main: [unclosed\nstorage:\n  type: memory\n"
        message = error(text)
        assert "invalid YAML" in message
        assert "line" in message
        line = int(message.split("line ")[1].split(":")[0])
        assert 3 <= line <= 5

    def test_bad_indentation(self) -> None:
        """A mapping value in the wrong place reports the line where it is."""
        text = "instance: a\nlmdbs:\n  main:\n    path: /x\n  bad: : here\n"
        message = error(text)
        assert "line 5" in message

    def test_top_level_not_mapping(self) -> None:
        """A YAML list at the top level is rejected."""
        assert "mapping" in error("- a\n- b\n")


class TestExampleConfigs:
    """The configs shipped in config/ stay valid as the schema evolves."""

    @pytest.mark.parametrize(
        "path",
        sorted((Path(__file__).resolve().parents[2] / "config").glob("*.yaml")),
        ids=lambda p: p.name,
    )
    def test_example_loads(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every example config loads once the variables it requires are set."""
        for var in ("EVSYNC_INSTANCE", "AWS_ACCOUNT_ID", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY",
                    "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_BUCKET"):
            monkeypatch.setenv(var, "123456789012" if var == "AWS_ACCOUNT_ID" else "example-value")
        cfg = load_config(path)
        assert cfg.lmdbs


class TestDeltas:
    """The deltas section: defaults, values, and one-line errors."""

    def test_defaults(self) -> None:
        """Without a deltas section, deltas are on with a chain of 20, half, 10m."""
        cfg = load(with_lmdb())
        assert (cfg.deltas.enabled, cfg.deltas.max_chain) == (True, 20)
        assert (cfg.deltas.max_chain_ratio, cfg.deltas.full_interval) == (0.5, 600.0)

    def test_values(self) -> None:
        """Every key is read, durations in Go syntax."""
        top = "deltas:\n  enabled: false\n  max_chain: 5\n  max_chain_ratio: 2\n  full_interval: 1h"
        cfg = load(with_lmdb(top=top))
        assert cfg.deltas.enabled is False and cfg.deltas.max_chain == 5
        assert cfg.deltas.max_chain_ratio == 2.0 and cfg.deltas.full_interval == 3600.0

    @pytest.mark.parametrize(
        ("top", "needle"),
        [
            ("deltas:\n  max_chain: 0", "deltas.max_chain"),
            ("deltas:\n  max_chain_ratio: .nan", "deltas.max_chain_ratio"),
            ("deltas:\n  full_interval: 10ms", "deltas.full_interval"),
            ("deltas:\n  chain: 3", "deltas.chain"),
        ],
        ids=["chain of zero", "NaN ratio", "interval below 1s", "unknown key"],
    )
    def test_bad_values_name_the_key(self, top: str, needle: str) -> None:
        """A wrong deltas value is one line naming the key."""
        assert needle in error(with_lmdb(top=top))


class TestMaxInflatedSize:
    """storage_max_inflated_size: the most a remote object may inflate to (issue 16 §4)."""

    def test_default_fits_real_lmdbs(self) -> None:
        """Unset, it is 64 GiB: far above any PowerDNS LMDB."""
        assert load(with_lmdb()).storage_max_inflated_size == 64 << 30

    def test_a_size_is_read(self) -> None:
        """LS size syntax, as map_size."""
        cfg = load(with_lmdb(top="storage_max_inflated_size: 2GB"))
        assert cfg.storage_max_inflated_size == 2 << 30

    @pytest.mark.parametrize(
        ("value", "needle"),
        [("0", "must be at least 1MB"), ("100KB", "must be at least 1MB"), ("lots", "size")],
        ids=["zero", "below 1MB", "not a size"],
    )
    def test_bad_values_name_the_key(self, value: str, needle: str) -> None:
        """A cap of nothing (every object rejected) or no size is one line naming the key."""
        message = error(with_lmdb(top=f"storage_max_inflated_size: {value}"))
        assert message.startswith("storage_max_inflated_size: ")
        assert needle in message


class TestLightningStream:
    """The lightningstream section and the S3 update-marker options (issue 17)."""

    def test_defaults(self) -> None:
        """Unset: .pb.gz objects are read, none are written, at most one a second."""
        ls = load(with_lmdb()).lightningstream
        assert (ls.read, ls.write, ls.only, ls.write_interval) == (True, False, False, 1.0)
        assert not ls.writes

    def test_values(self) -> None:
        """Every key is read; durations in Go syntax."""
        top = "lightningstream:\n  read: false\n  write: true\n  write_interval: 250ms"
        ls = load(with_lmdb(top=top)).lightningstream
        assert (ls.read, ls.write, ls.write_interval) == (False, True, 0.25)
        assert ls.writes

    def test_only_implies_write(self) -> None:
        """``only`` (tests, migration rehearsals) writes .pb.gz without ``write`` set."""
        ls = load(with_lmdb(top="lightningstream:\n  only: true")).lightningstream
        assert ls.only and ls.writes

    @pytest.mark.parametrize(
        ("top", "needle"),
        [
            ("lightningstream:\n  write_interval: 1ms", "lightningstream.write_interval"),
            ("lightningstream:\n  write: maybe", "lightningstream.write"),
            ("lightningstream:\n  only: true\n  read: false", "lightningstream.read"),
            ("lightningstream:\n  only: true\n  write: false", "lightningstream.write"),
            ("lightningstream:\n  writes: true", "lightningstream.writes"),
        ],
        ids=["interval too short", "not a boolean", "only without read",
             "only without write", "unknown key"],
    )
    def test_bad_values_name_the_key(self, top: str, needle: str) -> None:
        """A wrong lightningstream value is one line starting with its key."""
        assert error(with_lmdb(top=top)).startswith(needle + ":")

    def test_update_marker_options(self) -> None:
        """LS's S3 options use_update_marker and update_marker_force_list_interval load."""
        text = S3.replace(
            "    region: eu-west-1\n",
            "    region: eu-west-1\n    use_update_marker: true\n"
            "    update_marker_force_list_interval: 1m\n",
        )
        options = load(text).storage.options
        assert isinstance(options, S3Options)
        assert options.use_update_marker and options.update_marker_force_list_interval == 60.0

    def test_update_marker_off_by_default(self) -> None:
        """Without the option no marker is written, as in LS."""
        options = load(S3).storage.options
        assert isinstance(options, S3Options) and not options.use_update_marker
