"""The status page at ``/``: what it shows, that hostile names are escaped, that partial
state never breaks it, and that it stays self-contained (no external asset, no secret)."""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from evsync.config import LmdbConfig, LmdbOptions
from evsync.daemon import Daemon
from evsync.statuspage import READ_ERROR, REFRESH_SECONDS, read_or_error, render_page
from evsync.storage.memory import MemoryStore
from tests.unit.test_syncer import make_config

HOSTILE = '<script>alert("x")</script>'


class Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def rows(self, kind: str) -> list[str]:
        """The keys of the rows of one kind (``data-<kind>``), in page order."""
        return [str(a[f"data-{kind}"]) for t, a in self.tags if t in ("tr", "li")
                and f"data-{kind}" in a]


def parse(page: str) -> Elements:
    parser = Elements()
    parser.feed(page)
    parser.close()
    return parser


def full_status() -> dict[str, Any]:
    """A /status of instance a with one peer b, hints, a rejection; as the daemon returns."""
    return {
        "instance": "a",
        "version": "0.1.0",
        "hostname": "ns1",
        "storage": "s3://zones/ at http://key:secret@127.0.0.1:9000",
        "uptime_seconds": 3725.0,
        "dbs": {
            "main": {
                "db": "main",
                "instance": "a",
                "last_txn_id": 42,
                "last_synced_txn_id": 41,
                "last_upload": "main__a__20260101T000000Z__G1__0000000000000042.pb.gz",
                "startup_done": True,
                "rejoin_blocked": None,
                "waiting_for": [],
                "instances": {
                    "a": {"newest_seen": "main__a__x", "merged": "main__a__x",
                          "newest_seen_age_seconds": 3.0, "merged_age_seconds": 3.0,
                          "lag_seconds": None},
                    "b": {"newest_seen": "main__b__y", "merged": "main__b__y",
                          "newest_seen_age_seconds": 125.0, "merged_age_seconds": 125.0,
                          "lag_seconds": 0.0123},
                },
                "hints": {"received": {"mqtt": 7, "listing": 9, "poll": 2},
                          "first": {"mqtt": 6, "listing": 1}, "dropped": {}},
                "health": {},
                "stats": {},
                "rejected_objects": ["main__c__old", "main__c__new"],
            }
        },
        "push_sources": {"mqtt": {"connected": True, "messages": 7, "last_error": ""}},
        "triggers": ["watcher", "poll", "listing", "mqtt"],
    }


def full_health() -> dict[str, Any]:
    return {
        "status": "error",
        "failing": ["main_storage_list"],
        "checks": {
            "main_storage_list": {"status": "error", "failing_for_seconds": 312.4,
                                  "last_error": "bucket unreachable"},
            "main_storage_store": {"status": "ok", "failing_for_seconds": None,
                                   "last_error": ""},
        },
    }


class TestContent:
    """The page answers an operator's first questions."""

    def test_peers_show_newest_object_age_and_lag(self) -> None:
        """Each instance of each db is a row with its newest object, its age and the lag;
        this instance is marked."""
        page = render_page(full_status(), full_health())
        doc = parse(page)
        assert doc.rows("peer") == ["a", "b"]
        assert "main__b__y" in page and "2m 05s" in page and "12ms" in page
        assert "(this instance)" in page

    def test_triggers_are_ordered_by_who_announced_first(self) -> None:
        """The sources are listed by the changes they announced first, most first, with
        the hints each delivered; the running triggers are named."""
        doc = parse(render_page(full_status(), full_health()))
        assert doc.rows("trigger") == ["main/mqtt", "main/listing", "main/poll"]
        assert "running: watcher, poll, listing, mqtt" in "".join(doc.text)

    def test_health_checks_show_their_last_errors(self) -> None:
        """Every check is a row with its level, how long it has failed and its last error;
        the overall verdict heads the section and the title."""
        page = render_page(full_status(), full_health())
        doc = parse(page)
        assert doc.rows("check") == ["main_storage_list", "main_storage_store"]
        assert "bucket unreachable" in page and "5m 12s" in page
        assert "<title>evsync a — error</title>" in page

    def test_rejections_are_listed_newest_first(self) -> None:
        """The recently rejected objects are listed per db, the newest first."""
        doc = parse(render_page(full_status(), full_health()))
        assert doc.rows("rejected") == ["main__c__new", "main__c__old"]

    def test_dbs_show_their_state_and_txns(self) -> None:
        """Each db is a row with its state, last and synced txn and last upload."""
        page = render_page(full_status(), full_health())
        assert parse(page).rows("db") == ["main"]
        assert "syncing" in page and ">42<" in page and ">41<" in page

    def test_a_long_name_is_cut_with_the_whole_in_its_title(self) -> None:
        """A name longer than a cell holds is cut; its full text is the cell's title."""
        status = full_status()
        status["dbs"]["main"]["last_upload"] = "x" * 500
        page = render_page(status, {})
        assert f'title="{"x" * 500}"' in page and "x" * 501 not in page


class TestEscaping:
    """Names and errors come from the bucket: they are shown as text, never as markup."""

    def test_hostile_names_and_errors_are_escaped(self) -> None:
        """An instance, object, db, error and rejection named ``<script>…`` appear
        escaped: the page holds no script element and no unescaped quote in attributes."""
        status = full_status()
        db = status["dbs"]["main"]
        db["instances"][HOSTILE] = {"newest_seen": HOSTILE, "merged": HOSTILE,
                                    "lag_seconds": 1.0}
        db["rejected_objects"] = [HOSTILE]
        db["hints"]["first"][HOSTILE] = 99
        status["dbs"][HOSTILE] = {"lmdb_missing": HOSTILE}
        status["instance"] = HOSTILE
        health = full_health()
        health["checks"][HOSTILE] = {"status": HOSTILE, "last_error": HOSTILE}
        page = render_page(status, health)
        doc = parse(page)
        assert not [t for t, _a in doc.tags if t == "script"]
        assert "<script>" not in page
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
        assert HOSTILE in doc.rows("peer") and HOSTILE in doc.rows("rejected")
        assert HOSTILE in "".join(doc.text)  # shown to the reader as the text it is

    def test_no_secret_from_a_storage_address(self) -> None:
        """Credentials written into an endpoint URL (user:password@) are not shown."""
        page = render_page(full_status(), full_health())
        assert "secret" not in page and "key:" not in page
        assert "http://127.0.0.1:9000" in page


class TestSelfContained:
    """The page loads nothing from elsewhere and refreshes itself; it fits a phone."""

    def test_no_external_asset_and_it_refreshes(self) -> None:
        """No element loads a resource; the links are the daemon's own paths; a meta
        refresh reloads the page every REFRESH_SECONDS; a viewport fits narrow screens."""
        doc = parse(render_page(full_status(), full_health()))
        for tag, attrs in doc.tags:
            assert "src" not in attrs, tag
            if tag == "a" or tag == "link":
                assert str(attrs.get("href", "")).startswith("/"), attrs
        metas = [a for t, a in doc.tags if t == "meta"]
        assert {"http-equiv": "refresh", "content": str(REFRESH_SECONDS)} in metas
        assert any(a.get("name") == "viewport" for a in metas)


class TestPartialState:
    """Whatever is known is drawn; nothing missing or odd raises."""

    def test_empty_state_renders(self) -> None:
        """No status and no health at all still give a whole page saying so."""
        page = render_page({}, {})
        assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
        assert "no db configured" in page and "no health check yet" in page

    def test_odd_shapes_render(self) -> None:
        """Fields of unexpected types (a list for a dict, text for numbers) do not raise."""
        status: dict[str, Any] = {
            "dbs": {"main": {"instances": ["b"], "hints": None, "last_txn_id": "n/a",
                             "rejected_objects": None, "waiting_for": ["b"]},
                    "bad": "not a dict"},
            "push_sources": {"mqtt": None},
            "uptime_seconds": "soon",
        }
        page = render_page(status, {"checks": {"x": None}, "status": None})
        assert "waiting for: b" in page and "no instance seen" in page

    def test_a_reader_that_raises_leaves_a_note(self) -> None:
        """A status reader that raises gives a page naming the failure, not an error."""

        def broken() -> dict[str, Any]:
            raise RuntimeError("lmdb closed")

        status = read_or_error("the status", broken)
        assert status == {READ_ERROR: "cannot read the status: lmdb closed"}
        page = render_page(status, full_health())
        assert "cannot read the status: lmdb closed" in page
        assert "main_storage_list" in page

    def test_a_real_daemon_with_a_missing_lmdb_and_a_db_starting(self, tmp_path: Path) -> None:
        """A daemon whose `other` LMDB does not exist and whose `main` has not run its
        startup yet (no peers known) renders: other is "LMDB missing", main "starting"."""
        cfg, main = make_config("a", tmp_path / "a")
        other = LmdbConfig(name="other", path=str(tmp_path / "other"),
                           options=LmdbOptions(create=False, map_size=1 << 24))
        d = Daemon(dataclasses.replace(cfg, lmdbs={"main": main, "other": other}),
                   store=MemoryStore())
        try:
            page = render_page(d.status(), d.health()[1])
        finally:
            d.close()
        doc = parse(page)
        assert doc.rows("db") == ["main", "other"]
        assert "LMDB missing" in page and "starting" in page
        assert "no instance seen in the bucket yet" in page
        assert "other_lmdb" in doc.rows("check")
