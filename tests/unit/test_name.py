"""Snapshot object names (DESIGN §4): building, parsing, ordering and rejection."""

from __future__ import annotations

import calendar
import random

import pytest

from evsync.errors import InvalidNameError
from evsync.snapshot.name import (
    COPY_EXTRA,
    SnapshotName,
    checkpoint_extra,
    db_prefix,
    try_parse,
)

TS = 1_700_000_000_123_456_789  # 2023-11-14 22:13:20.123456789 UTC
NAME = "main__inst-1__20231114-221320-123456789__GX.evs.zst"
NS = 1_000_000_000


class TestBuildAndParse:
    """build and parse are inverses and produce LS's exact layout."""

    def test_exact_format(self) -> None:
        """build gives db__instance__YYYYMMDD-HHMMSS-nnnnnnnnn__GX.evs.zst."""
        assert SnapshotName.build("main", "inst-1", TS).name == NAME
        assert str(SnapshotName.build("main", "inst-1", TS)) == NAME

    def test_parse_fields(self) -> None:
        """parse extracts db, instance, timestamp, generation and extension."""
        parsed = SnapshotName.parse(NAME)
        assert parsed.db == "main"
        assert parsed.instance == "inst-1"
        assert parsed.timestamp_ns == TS
        assert parsed.generation == "GX"
        assert parsed.ext == "evs.zst"
        assert parsed.extras == ()
        assert parsed.is_evsync

    def test_parse_timestamp_against_calendar(self) -> None:
        """The parsed timestamp equals the UTC calendar time written in the name."""
        parsed = SnapshotName.parse("db__a__19991231-235958-000000007__GX.evs.zst")
        assert parsed.timestamp_ns == calendar.timegm((1999, 12, 31, 23, 59, 58)) * NS + 7

    @pytest.mark.parametrize(
        "ts", [0, 1, NS - 1, NS, TS, 4_102_444_800 * NS - 1, 1_234_567_890_987_654_321]
    )
    def test_round_trip(self, ts: int) -> None:
        """parse(build(ts)) returns the same timestamp and an equal name."""
        built = SnapshotName.build("db-1", "Host-A", ts)
        parsed = SnapshotName.parse(built.name)
        assert parsed == built
        assert parsed.timestamp_ns == ts

    def test_round_trip_with_extras(self) -> None:
        """Names with extras round-trip and keep the extras."""
        built = SnapshotName.build("main", "a", TS, extras=("X123", "Y456"))
        assert built.name.endswith("__GX__X123__Y456.evs.zst")
        assert SnapshotName.parse(built.name) == built

    def test_db_prefix(self) -> None:
        """The listing prefix of a db is '<db>__' and every name of the db starts with it."""
        assert db_prefix("main") == "main__"
        assert NAME.startswith(db_prefix("main"))
        assert not "mainx__a__20231114-221320-123456789__GX.evs.zst".startswith(db_prefix("main"))


class TestOrdering:
    """Sorting names of one instance sorts them by time."""

    def test_nanosecond_apart(self) -> None:
        """Two names 1 ns apart sort in time order."""
        early = SnapshotName.build("main", "a", TS)
        late = SnapshotName.build("main", "a", TS + 1)
        assert early.name < late.name
        assert early < late

    def test_across_second_boundary(self) -> None:
        """x.999999999 sorts before (x+1).000000000."""
        base = (TS // NS) * NS
        early = SnapshotName.build("main", "a", base + NS - 1)
        late = SnapshotName.build("main", "a", base + NS)
        assert early.name < late.name

    def test_across_day_and_year(self) -> None:
        """The last nanosecond of a year sorts before the first of the next one."""
        new_year = calendar.timegm((2024, 1, 1, 0, 0, 0)) * NS
        assert (
            SnapshotName.build("main", "a", new_year - 1).name
            < SnapshotName.build("main", "a", new_year).name
        )

    def test_sorting_names_equals_sorting_times(self) -> None:
        """Sorting many shuffled names gives them in timestamp order."""
        rng = random.Random(42)
        stamps = sorted({rng.randrange(0, 4_000_000_000 * NS) for _ in range(300)})
        stamps += [stamps[-1] + 1, stamps[-1] + NS, stamps[-1] + 10 * NS]
        names = [SnapshotName.build("main", "a", ts).name for ts in stamps]
        rng.shuffle(names)
        assert [SnapshotName.parse(n).timestamp_ns for n in sorted(names)] == stamps


class TestForeignAndExtras:
    """LS names, extras and deltas."""

    def test_ls_name_parses_but_is_not_evsync(self) -> None:
        """A .pb.gz name parses, but is_evsync is False."""
        parsed = SnapshotName.parse("main__inst-1__20231114-221320-123456789__G-1a2b.pb.gz")
        assert parsed.ext == "pb.gz"
        assert parsed.generation == "G-1a2b"
        assert parsed.timestamp_ns == TS
        assert not parsed.is_evsync

    def test_extras_parsed(self) -> None:
        """Extras after the generation are kept in order."""
        parsed = SnapshotName.parse("main__a__20231114-221320-123456789__GX__X123__Y456.evs.zst")
        assert parsed.extras == ("X123", "Y456")
        assert parsed.delta_base_ns is None

    def test_delta_extra_gives_base(self) -> None:
        """The extra D<timestamp> gives delta_base_ns."""
        base = TS - 5 * NS
        name = SnapshotName.build("main", "a", TS, extras=(f"D{_fmt(base)}",))
        parsed = SnapshotName.parse(name.name)
        assert parsed.delta_base_ns == base

    def test_full_object_has_no_delta_base(self) -> None:
        """A name without a D extra has no delta base."""
        assert SnapshotName.parse(NAME).delta_base_ns is None


class TestCheckpointNames:
    """A checkpoint is a full object named ``__A<point>`` (DESIGN §7)."""

    def test_checkpoint_extra_gives_its_point(self) -> None:
        """A<timestamp> round-trips and marks a full object, not a delta."""
        point = TS - 3 * NS
        name = SnapshotName.build("main", "a", TS, extras=(checkpoint_extra(point),))
        parsed = SnapshotName.parse(name.name)
        assert parsed.name.endswith(f"__GX__A{_fmt(point)}.evs.zst")
        assert parsed.checkpoint_of_ns == point and parsed.is_checkpoint
        assert parsed.delta_base_ns is None and not parsed.is_delta

    def test_a_plain_full_object_is_no_checkpoint(self) -> None:
        """No A extra: no point."""
        assert SnapshotName.parse(NAME).checkpoint_of_ns is None

    def test_a_bad_point_is_rejected(self) -> None:
        """The point must be a timestamp, as a delta's base must."""
        with pytest.raises(InvalidNameError, match="bad timestamp"):
            SnapshotName.parse("main__a__20231114-221320-123456789__GX__Anope.evs.zst")

    def test_a_delta_cannot_be_a_checkpoint(self) -> None:
        """Both D and A on one .evs.zst name: rejected, naming why."""
        d, a = f"D{_fmt(TS - NS)}", f"A{_fmt(TS - NS)}"
        with pytest.raises(InvalidNameError, match="a delta cannot be a checkpoint"):
            SnapshotName.parse(f"main__a__20231114-221320-123456789__GX__{a}__{d}.evs.zst")

    def test_on_a_pb_gz_the_extra_means_nothing(self) -> None:
        """LS reads .pb.gz only and ignores extras; so does evsync for this one."""
        parsed = SnapshotName.parse("main__a__20231114-221320-123456789__GX__Afoo.pb.gz")
        assert parsed.checkpoint_of_ns is None


class TestLightningStreamNames:
    """``.pb.gz`` names (issue 17): always full snapshots; evsync's copies are marked."""

    def test_pb_gz_with_a_d_extra_is_not_a_delta(self) -> None:
        """LS has no deltas: a D extra (an LSE hook's, say) on a .pb.gz is just an extra,
        and need not be a timestamp, as LS accepts any extra value."""
        parsed = SnapshotName.parse("main__ls-1__20231114-221320-123456789__GX__Dfoo.pb.gz")
        assert parsed.delta_base_ns is None and not parsed.is_delta
        assert parsed.is_ls and not parsed.is_copy

    def test_copy_marker(self) -> None:
        """A .pb.gz that evsync writes beside its .evs.zst chain carries COPY_EXTRA."""
        copy = SnapshotName.build("main", "a", TS, extras=(COPY_EXTRA,), ext="pb.gz")
        assert copy.name == "main__a__20231114-221320-123456789__GX__Eevsync.pb.gz"
        parsed = SnapshotName.parse(copy.name)
        assert parsed.is_copy and parsed.is_ls and not parsed.is_delta

    def test_marker_on_evs_is_no_copy(self) -> None:
        """Only a .pb.gz is a copy; the marker on an .evs.zst means nothing."""
        name = SnapshotName.build("main", "a", TS, extras=(COPY_EXTRA,))
        assert not SnapshotName.parse(name.name).is_copy

    def test_copies_sort_by_time_with_ls_objects(self) -> None:
        """The marker comes after the timestamp, so LS's newest-by-name rule still picks
        the newest object of an instance."""
        older = SnapshotName.build("main", "a", TS, extras=(COPY_EXTRA,), ext="pb.gz")
        newer = SnapshotName.build("main", "a", TS + 1, ext="pb.gz")
        assert older.name < newer.name


def _fmt(ts: int) -> str:
    """The timestamp field of a built name, used to write D extras."""
    return SnapshotName.build("x", "x", ts).name.split("__")[2]


class TestInvalid:
    """Names that do not follow the layout raise InvalidNameError; try_parse gives None."""

    @pytest.mark.parametrize(
        "name",
        [
            pytest.param("main__inst-1__20231114-221320-123456789__GX", id="no-extension"),
            pytest.param("main__inst-1__20231114-221320-123456789__GX.", id="empty-extension"),
            pytest.param("main__inst-1__20231114-221320-123456789.evs.zst", id="three-fields"),
            pytest.param("main__inst-1.evs.zst", id="two-fields"),
            pytest.param("main__inst-1__20231114-2213-123456789__GX.evs.zst", id="ts-short"),
            pytest.param("main__inst-1__20231114-221320-12345678__GX.evs.zst", id="ns-8-digits"),
            pytest.param("main__inst-1__2023111-4221320-123456789__GX.evs.zst", id="ts-shape"),
            pytest.param("main__inst-1__20231314-221320-123456789__GX.evs.zst", id="month-13"),
            pytest.param("main__inst-1__20230230-221320-123456789__GX.evs.zst", id="feb-30"),
            pytest.param("main__inst-1__20231114-251320-123456789__GX.evs.zst", id="hour-25"),
            pytest.param("main__inst-1__2023111a-221320-123456789__GX.evs.zst", id="ts-letter"),
            pytest.param("main__inst_1__20231114-221320-123456789__GX.evs.zst", id="instance-_"),
            pytest.param("main__in/st__20231114-221320-123456789__GX.evs.zst", id="instance-/"),
            pytest.param("main____20231114-221320-123456789__GX.evs.zst", id="empty-instance"),
            pytest.param("Main__inst-1__20231114-221320-123456789__GX.evs.zst", id="db-upper"),
            pytest.param("ma_in__inst__20231114-221320-123456789__GX.evs.zst", id="db-_"),
            pytest.param("main__inst-1__20231114-221320-123456789__X1.evs.zst", id="gen-not-G"),
            pytest.param("main__inst-1__20231114-221320-123456789__gx.evs.zst", id="gen-lower"),
            pytest.param(
                "main__inst-1__20231114-221320-123456789__GX__X1__X2.evs.zst", id="extra-repeat"
            ),
            pytest.param(
                "main__inst-1__20231114-221320-123456789__GX__x1.evs.zst", id="extra-lower"
            ),
            pytest.param("main__inst-1__20231114-221320-123456789__GX__.evs.zst", id="extra-empty"),
        ],
    )
    def test_rejected(self, name: str) -> None:
        """Malformed names raise InvalidNameError and try_parse returns None."""
        with pytest.raises(InvalidNameError):
            SnapshotName.parse(name)
        assert try_parse(name) is None

    def test_second_60_rejected(self) -> None:
        """A second field of 60 is not a valid UTC time (it would alias the next minute)."""
        name = "main__inst-1__20231114-225960-000000000__GX.evs.zst"
        with pytest.raises(InvalidNameError):
            SnapshotName.parse(name)

    def test_try_parse_returns_name_on_success(self) -> None:
        """try_parse returns the parsed name for a valid name."""
        parsed = try_parse(NAME)
        assert parsed is not None
        assert parsed.timestamp_ns == TS

    @pytest.mark.parametrize("junk", ["", ".", "__", "readme.txt", "main__.evs.zst"])
    def test_try_parse_on_junk(self, junk: str) -> None:
        """try_parse returns None for arbitrary non-snapshot names."""
        assert try_parse(junk) is None


def _strptime_parse(text: str) -> int | None:
    """The parser before issue 18's second pass (strptime and a round trip), the
    reference the arithmetic one must agree with; None where it refused."""
    import re
    import time

    from evsync.snapshot.name import format_timestamp

    match = re.fullmatch(r"([0-9]{8})-([0-9]{6})-([0-9]{9})", text)
    if not match:
        return None
    try:
        st = time.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    result = calendar.timegm(st) * NS + int(match.group(3))
    return result if format_timestamp(result) == text else None


class TestTimestampParser:
    """parse_timestamp by arithmetic accepts and returns exactly what the strptime
    parser did (it was a quarter of the MQTT thread's CPU per message)."""

    EDGES = (
        "00000101-000000-000000000",
        "00010101-000000-000000000",
        "09991231-235959-999999999",
        "10000101-000000-000000000",
        "19691231-235959-999999999",
        "19700101-000000-000000000",
        "20000229-120000-000000001",
        "19000229-000000-000000000",
        "20230229-000000-000000000",
        "20231301-000000-000000000",
        "20231200-000000-000000000",
        "20231231-240000-000000000",
        "20231231-236000-000000000",
        "20231231-235960-000000000",
        "20231231-235961-000000000",
        "99991231-235959-999999999",
        "2023123-1235959-999999999",
        "20231231-235959-99999999",
        "20231231-235959-9999999999",
        "２0231231-235959-999999999",
        "20231231_235959-999999999",
    )

    @pytest.mark.parametrize("text", EDGES)
    def test_edges_as_strptime(self, text: str) -> None:
        """Edge dates and malformed texts: the same result or the same refusal."""
        from evsync.snapshot.name import parse_timestamp

        expected = _strptime_parse(text)
        if expected is None:
            with pytest.raises(InvalidNameError):
                parse_timestamp(text)
        else:
            assert parse_timestamp(text) == expected

    def test_random_fields_as_strptime(self) -> None:
        """2,000 random field combinations (valid and not): identical verdicts."""
        from evsync.snapshot.name import parse_timestamp

        rng = random.Random(18)
        for _ in range(2000):
            text = (
                f"{rng.randrange(0, 10000):04d}{rng.randrange(0, 14):02d}"
                f"{rng.randrange(0, 33):02d}-{rng.randrange(0, 25):02d}"
                f"{rng.randrange(0, 61):02d}{rng.randrange(0, 62):02d}-"
                f"{rng.randrange(0, NS):09d}"
            )
            expected = _strptime_parse(text)
            if expected is None:
                with pytest.raises(InvalidNameError):
                    parse_timestamp(text)
            else:
                assert parse_timestamp(text) == expected, text
