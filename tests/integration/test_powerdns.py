"""Two real PowerDNS 4.7 servers kept in sync by evsync in shadow mode through one S3 bucket.

Nothing is mocked: each ``pdns_server`` (Debian's pdns-server + pdns-backend-lmdb)
serves its own LMDB, ``pdnsutil`` writes it, evsync runs beside it as a subprocess
with ``schema_tracks_changes: false`` and ``dupsort_hack: true`` on a moto-server
bucket, and the answers are read with ``dig``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Instance, PowerDns, wait_for

SYNC_TIMEOUT = 20.0


@dataclass
class Node:
    """One PowerDNS server and the evsync beside it."""

    dns: PowerDns
    sync: Instance


def pdns47_lmdbs(dns: PowerDns) -> dict[str, Any]:
    """The lmdbs section of config/pdns47.yaml, pointed at this server's files."""
    options = {"no_subdir": True, "create": True, "map_size": "256MB"}
    return {
        "main": {
            "path": str(dns.lmdb),
            "schema_tracks_changes": False,
            "dupsort_hack": True,
            "options": options,
        },
        "shard": {
            "path": f"{dns.lmdb}-0",
            "schema_tracks_changes": False,
            "options": options,
        },
    }


@pytest.fixture
def cluster(
    tmp_path: Path, instances: Callable[..., Instance], s3_storage: dict[str, Any]
) -> Iterator[Callable[[str], Node]]:
    """Factory of PowerDNS + evsync nodes on one bucket; everything is stopped afterwards."""
    servers: list[PowerDns] = []

    def make(name: str) -> Node:
        dns = PowerDns(tmp_path / f"pdns-{name}")
        servers.append(dns)
        dns.start()
        sync = instances(name, s3_storage, lmdbs=pdns47_lmdbs(dns))
        sync.start()
        return Node(dns, sync)

    try:
        yield make
    finally:
        for dns in servers:
            dns.stop()


def converge(check: Callable[[], Any], what: str) -> Any:
    """Wait until a DNS answer shows the synced state."""
    return wait_for(check, timeout=SYNC_TIMEOUT, interval=0.1, what=what)


class TestPowerDns47:
    """Zones and records written with pdnsutil on one server are answered by the other."""

    def test_zone_records_changes_deletes_and_zone_removal(
        self, cluster: Callable[[str], Node]
    ) -> None:
        """A zone made on A answers on B; B's changes and deletes reach A; deleting the zone
        makes both refuse it."""
        a, b = cluster("a"), cluster("b")
        a.dns.util("create-zone", "example.test", "ns1.example.test")
        a.dns.util("add-record", "example.test", "www", "A", "300", "192.0.2.10")
        a.dns.util("add-record", "example.test", "@", "MX", "300", "10 mail.example.test")
        converge(lambda: b.dns.answer("www.example.test") == ["192.0.2.10"], "www on B")
        # a later commit on A, so possibly a later object: it may land a moment after www
        converge(
            lambda: b.dns.answer("example.test", "MX") == ["10 mail.example.test."], "MX on B"
        )

        b.dns.util("replace-rrset", "example.test", "www", "A", "300", "192.0.2.20", "192.0.2.21")
        b.dns.util("add-record", "example.test", "mail", "A", "300", "192.0.2.30")
        converge(
            lambda: a.dns.answer("www.example.test") == ["192.0.2.20", "192.0.2.21"],
            "B's change on A",
        )
        converge(lambda: a.dns.answer("mail.example.test") == ["192.0.2.30"], "B's new name on A")

        b.dns.util("delete-rrset", "example.test", "mail", "A")
        converge(lambda: a.dns.status("mail.example.test") == "NXDOMAIN", "B's delete on A")

        b.dns.util("delete-zone", "example.test")
        converge(lambda: a.dns.status("www.example.test") == "REFUSED", "zone gone on A")
        assert "example.test" not in a.dns.util("list-all-zones")
        for node in (a, b):
            assert " ERROR " not in node.sync.log(), node.sync.log()

    def test_later_write_wins_a_few_hundred_ms_apart(self, cluster: Callable[[str], Node]) -> None:
        """Conflicting writes 300 ms apart on A then B: the watcher stamps each within
        milliseconds of its commit, so B's later write wins on both servers (LS's 1 s polling
        can pick either)."""
        a, b = cluster("a"), cluster("b")
        a.dns.util("create-zone", "conflict.test", "ns1.conflict.test")
        a.dns.util("add-record", "conflict.test", "x", "A", "300", "192.0.2.1")
        converge(lambda: b.dns.answer("x.conflict.test") == ["192.0.2.1"], "x on B")
        time.sleep(0.5)  # both instances idle before the conflict

        a.dns.util("replace-rrset", "conflict.test", "x", "A", "300", "192.0.2.100")
        time.sleep(0.3)
        b.dns.util("replace-rrset", "conflict.test", "x", "A", "300", "192.0.2.200")

        converge(
            lambda: a.dns.answer("x.conflict.test") == b.dns.answer("x.conflict.test")
            == ["192.0.2.200"],
            "B's later write on both",
        )
        time.sleep(1.0)  # and it stays that way once every object has been merged
        assert a.dns.answer("x.conflict.test") == b.dns.answer("x.conflict.test") == ["192.0.2.200"]

    def test_simultaneous_edits_converge(self, cluster: Callable[[str], Node]) -> None:
        """Edits of the same names on both servers at once end with both answering the same."""
        a, b = cluster("a"), cluster("b")
        a.dns.util("create-zone", "race.test", "ns1.race.test")
        converge(lambda: b.dns.status("race.test", "SOA") == "NOERROR", "zone on B")
        for i in range(5):
            a.dns.util("replace-rrset", "race.test", "y", "A", "300", f"192.0.2.{i}")
            b.dns.util("replace-rrset", "race.test", "y", "A", "300", f"192.0.2.{i + 10}")
            b.dns.util("replace-rrset", "race.test", f"b{i}", "TXT", "300", f'"from b {i}"')
            a.dns.util("replace-rrset", "race.test", f"a{i}", "TXT", "300", f'"from a {i}"')

        def same() -> bool:
            names = ["y.race.test"] + [f"{s}{i}.race.test" for s in "ab" for i in range(5)]
            return all(
                a.dns.answer(n, "ANY") == b.dns.answer(n, "ANY") != [] for n in names
            )

        converge(same, "both servers answering the same")
        assert a.dns.answer("y.race.test") in (["192.0.2.4"], ["192.0.2.14"])

    def test_records_added_while_evsync_was_down(self, cluster: Callable[[str], Node]) -> None:
        """Records written to B's PowerDNS while B's evsync is stopped reach A after it starts
        again (captured by the startup seed)."""
        a, b = cluster("a"), cluster("b")
        a.dns.util("create-zone", "down.test", "ns1.down.test")
        converge(lambda: b.dns.status("down.test", "SOA") == "NOERROR", "zone on B")
        assert b.sync.stop() == 0
        b.dns.util("add-record", "down.test", "late", "A", "300", "192.0.2.77")
        b.sync.start()
        converge(lambda: a.dns.answer("late.down.test") == ["192.0.2.77"], "late record on A")
