"""The status page served at ``/`` (DESIGN §10): what an operator asks first, as HTML.

Server-rendered with the standard library from the same data as ``/status`` and
``/healthz``: no build step, no external asset (nothing leaves loopback), and the page
refreshes itself. Instance names, object names and error texts come from the bucket or
from storage errors and are hostile input, so every value passes :func:`_e`
(``html.escape``) on its way into the page. The page shows names and addresses only,
never a config value that could be a secret.

It never raises on partial state: a db whose LMDB is missing, no peers yet, a db still
starting, or a section whose data has an unexpected shape each render as what is known;
a section that still fails is replaced by one line naming the failure.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

# The page reloads itself this often (seconds): a wall screen stays current.
REFRESH_SECONDS = 5
# Long object names are cut to this many characters in tables (the title has all of it).
MAX_CELL_CHARS = 120
HTML_TYPE = "text/html; charset=utf-8"
# The key under which :func:`read_or_error` reports a reader that raised.
READ_ERROR = "page_error"

_LEVEL_CLASS = {"ok": "ok", "warning": "warn", "error": "err"}
# user:password@ in a URL (an endpoint given with credentials): never shown
_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")

_STYLE = """
:root { color-scheme: light dark; --ok: #1a7f37; --warn: #9a6700; --err: #cf222e; }
body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 0.75rem;
       max-width: 72rem; }
h1 { font-size: 1.3rem; margin: 0 0 0.25rem; }
h2 { font-size: 1.1rem; margin: 1.25rem 0 0.4rem; border-bottom: 1px solid #8884; }
h3 { font-size: 1rem; margin: 0.9rem 0 0.3rem; }
.meta { color: #777; font-size: 0.85rem; margin: 0.2rem 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { text-align: left; padding: 0.25rem 0.5rem; border-bottom: 1px solid #8883;
         vertical-align: top; }
th { font-weight: 600; white-space: nowrap; }
td.name, td.id { font-family: ui-monospace, monospace; font-size: 0.85rem; }
td.name { overflow-wrap: anywhere; }
td.id { overflow-wrap: break-word; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 0 0.45rem; border-radius: 0.6rem; color: #fff;
         white-space: nowrap;
         font-size: 0.8rem; font-weight: 600; }
.ok { background: var(--ok); } .warn { background: var(--warn); }
.err { background: var(--err); }
.none { color: #777; font-style: italic; }
ul { margin: 0.2rem 0; padding-left: 1.2rem; }
li { overflow-wrap: anywhere; font-family: ui-monospace, monospace; font-size: 0.85rem; }
@media (max-width: 40rem) {
  thead { display: none; }
  table, tbody, tr, td { display: block; width: auto; }
  tr { border-bottom: 1px solid #8886; padding: 0.3rem 0; }
  td, td.num { border: 0; padding: 0.05rem 0.25rem; text-align: left; white-space: normal; }
  td::before { content: attr(data-label) ": "; color: #777; font-family: system-ui, sans-serif; }
  td:empty { display: none; }
}
"""


def _e(value: Any) -> str:
    """Any value as escaped HTML text (quotes too: it may land in an attribute)."""
    return html.escape("" if value is None else str(value), quote=True)


def _cut(value: Any) -> str:
    """A possibly long name, cut for a cell, escaped; the full text is its title."""
    text = "" if value is None else str(value)
    if len(text) <= MAX_CELL_CHARS:
        return _e(text)
    return f'<span title="{_e(text)}">{_e(text[:MAX_CELL_CHARS])}…</span>'


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _seconds(value: Any) -> str:
    """A duration as ``12ms``, ``1.5s``, ``4m 05s`` or ``2h 03m``; ``-`` when unknown."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    if value < 0:
        return f"-{_seconds(-value)}"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 60:
        return f"{value:.1f}s" if value < 10 else f"{value:.0f}s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    return f"{hours // 24}d {hours % 24:02d}h"


def _badge(level: Any, label: str | None = None) -> str:
    """A coloured ``ok``/``warning``/``error`` word (or ``label`` in that colour)."""
    cls = _LEVEL_CLASS.get(str(level), "err")
    return f'<span class="badge {cls}">{_e(label or level or "unknown")}</span>'


def _none(text: str) -> str:
    return f'<p class="none">{_e(text)}</p>'


# A cell: (escaped HTML, CSS class); a row: (its key, its cells)
Cell = tuple[str, str]
Row = tuple[str, list[Cell]]


def _table(headers: list[str], rows: list[Row], *, kind: str, caption: str = "") -> str:
    """A table of already escaped cells. Each row carries ``data-<kind>="<key>"`` so a
    reader (or a test) finds it by name; each cell its column's name as ``data-label``,
    which a narrow screen shows beside the value when rows become cards."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        f'<tr data-{kind}="{_e(key)}">'
        + "".join(
            f'<td class="{cls}" data-label="{_e(label)}">{text}</td>'
            for label, (text, cls) in zip(headers, cells, strict=True)
        )
        + "</tr>"
        for key, cells in rows
    )
    cap = f"<caption hidden>{_e(caption)}</caption>" if caption else ""
    table = f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _td(text: str, cls: str = "") -> Cell:
    """A cell of already escaped text."""
    return text, cls


# ------------------------------------------------------------------ sections


def _db_state(db: Mapping[str, Any]) -> tuple[str, str]:
    """(level, words) of one db: missing LMDB, rejoin blocked, starting or syncing."""
    if db.get("lmdb_missing"):
        return "error", "LMDB missing"
    if db.get("rejoin_blocked"):
        return "error", "rejoin blocked"
    if not db.get("startup_done"):
        return "warning", "starting"
    return "ok", "syncing"


def _section_dbs(status: Mapping[str, Any]) -> str:
    dbs = _dict(status.get("dbs"))
    if not dbs:
        return "<h2>Databases</h2>" + _none("no db configured")
    rows = []
    for name, raw in sorted(dbs.items()):
        db = _dict(raw)
        level, words = _db_state(db)
        waiting = db.get("waiting_for") or []
        note = db.get("lmdb_missing") or db.get("rejoin_blocked") or ""
        if waiting and not note:
            note = "waiting for: " + ", ".join(str(w) for w in waiting)
        rows.append(
            (
                name,
                [
                    _td(_e(name), "id"),
                    _td(_badge(level, words)),
                    _td(_e(db.get("last_txn_id", "-")), "num"),
                    _td(_e(db.get("last_synced_txn_id", "-")), "num"),
                    _td(_cut(db.get("last_upload") or "-"), "name"),
                    _td(_cut(note)),
                ],
            )
        )
    headers = ["db", "state", "last txn", "synced txn", "last upload", "note"]
    return "<h2>Databases</h2>" + _table(headers, rows, kind="db", caption="databases")


def _section_peers(status: Mapping[str, Any]) -> str:
    own = status.get("instance")
    parts = ["<h2>Instances</h2>"]
    for db_name, raw in sorted(_dict(status.get("dbs")).items()):
        db = _dict(raw)
        parts.append(f"<h3>db {_e(db_name)}</h3>")
        if db.get("lmdb_missing"):
            parts.append(_none("not synced: its LMDB does not exist yet"))
            continue
        peers = _dict(db.get("instances"))
        if not peers:
            parts.append(_none("no instance seen in the bucket yet"))
            continue
        rows = []
        for inst, praw in sorted(peers.items()):
            peer = _dict(praw)
            who = _e(inst) + (" <small>(this instance)</small>" if inst == own else "")
            rows.append(
                (
                    inst,
                    [
                        _td(who, "id"),
                        _td(_cut(peer.get("newest_seen") or "-"), "name"),
                        _td(_e(_seconds(peer.get("newest_seen_age_seconds"))), "num"),
                        _td(_cut(peer.get("merged") or "-"), "name"),
                        _td(_e(_seconds(peer.get("merged_age_seconds"))), "num"),
                        _td(_e(_seconds(peer.get("lag_seconds"))), "num"),
                    ],
                )
            )
        headers = ["instance", "newest object", "age", "merged", "merged age", "lag"]
        parts.append(_table(headers, rows, kind="peer", caption=f"instances of db {db_name}"))
    if len(parts) == 1:
        parts.append(_none("no db configured"))
    return "".join(parts)


def _section_triggers(status: Mapping[str, Any]) -> str:
    parts = ["<h2>Triggers</h2>"]
    triggers = status.get("triggers") or []
    if triggers:
        parts.append(f'<p class="meta">running: {_e(", ".join(str(t) for t in triggers))}</p>')
    rows = []
    for db_name, raw in sorted(_dict(status.get("dbs")).items()):
        hints = _dict(_dict(raw).get("hints"))
        first = _dict(hints.get("first"))
        received = _dict(hints.get("received"))
        for source in sorted(set(first) | set(received), key=lambda s: (-_int(first.get(s)), s)):
            rows.append(
                (
                    f"{db_name}/{source}",
                    [
                        _td(_e(db_name), "id"),
                        _td(_e(source), "id"),
                        _td(_e(_int(first.get(source))), "num"),
                        _td(_e(_int(received.get(source))), "num"),
                    ],
                )
            )
    if rows:
        headers = ["db", "source", "announced first", "hints received"]
        caption = "changes by the source announcing first"
        parts.append(_table(headers, rows, kind="trigger", caption=caption))
    else:
        parts.append(_none("no change announced yet"))
    push = _dict(status.get("push_sources"))
    for source, praw in sorted(push.items()):
        p = _dict(praw)
        up = p.get("connected", not p.get("failing", False))
        state = "receiving" if up else "not receiving"
        line = f"{source}: {state}, {_int(p.get('messages'))} messages"
        if p.get("last_error"):
            line += f"; last error: {p['last_error']}"
        parts.append(f'<p class="meta">{_e(line)}</p>')
    return "".join(parts)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _section_health(health: Mapping[str, Any]) -> str:
    checks = _dict(health.get("checks"))
    head = f"<h2>Health {_badge(health.get('status'))}</h2>"
    if not checks:
        return head + _none("no health check yet")
    rows = []
    for name, raw in sorted(checks.items()):
        check = _dict(raw)
        rows.append(
            (
                name,
                [
                    _td(_e(name), "id"),
                    _td(_badge(check.get("status"))),
                    _td(_e(_seconds(check.get("failing_for_seconds"))), "num"),
                    _td(_cut(check.get("last_error") or ""), "name"),
                ],
            )
        )
    headers = ["check", "status", "failing for", "last error"]
    return head + _table(headers, rows, kind="check", caption="health checks")


def _section_rejections(status: Mapping[str, Any]) -> str:
    parts = ["<h2>Recent rejections</h2>"]
    any_rejected = False
    for db_name, raw in sorted(_dict(status.get("dbs")).items()):
        names = _dict(raw).get("rejected_objects") or []
        if not names:
            continue
        any_rejected = True
        items = "".join(
            f'<li data-rejected="{_e(n)}">{_cut(n)}</li>' for n in reversed(list(names))
        )
        parts.append(f"<h3>db {_e(db_name)}</h3><ul>{items}</ul>")
    if not any_rejected:
        parts.append(_none("no object rejected since start"))
    return "".join(parts)


def _header(status: Mapping[str, Any]) -> str:
    instance = status.get("instance") or "?"
    storage = _USERINFO.sub("", str(status.get("storage") or "-"))
    meta = (
        f"host {status.get('hostname') or '?'} · version {status.get('version') or '?'}"
        f" · up {_seconds(status.get('uptime_seconds'))} · storage {storage}"
    )
    return f'<h1>evsync {_e(instance)}</h1><p class="meta">{_e(meta)}</p>'


Section = Callable[[], str]


def _safe(name: str, render: Section) -> str:
    """One section, or a line naming why it could not be drawn (the page still is)."""
    try:
        return render()
    except Exception as exc:  # a page must not fail on one odd field
        log.warning("status page: section %s failed: %s", name, exc)
        log.debug("status page section failure", exc_info=True)
        return f"<h2>{_e(name)}</h2>" + _none(f"cannot show this section: {exc}")


def read_or_error(what: str, read: Callable[[], Any]) -> dict[str, Any]:
    """``read()``'s dict, or ``{READ_ERROR: why}`` when it raised: the page shows the rest."""
    try:
        data = read()
    except Exception as exc:  # the page is drawn from what can be read
        log.warning("status page: reading %s failed: %s", what, exc)
        log.debug("status page read failure", exc_info=True)
        return {READ_ERROR: f"cannot read {what}: {exc}"}
    return _dict(data)


def render_page(status: Mapping[str, Any], health: Mapping[str, Any]) -> str:
    """The whole page from ``/status``'s and ``/healthz``'s data (either may be partial)."""
    status = _dict(status)
    health = _dict(health)
    title = f"evsync {status.get('instance') or ''} — {health.get('status') or 'unknown'}"
    errors = [str(d[READ_ERROR]) for d in (status, health) if d.get(READ_ERROR)]
    banner = "".join(f'<p class="badge err">{_e(err)}</p>' for err in errors)
    sections = [
        _safe("Header", lambda: _header(status)),
        banner,
        _safe("Health", lambda: _section_health(health)),
        _safe("Databases", lambda: _section_dbs(status)),
        _safe("Instances", lambda: _section_peers(status)),
        _safe("Triggers", lambda: _section_triggers(status)),
        _safe("Recent rejections", lambda: _section_rejections(status)),
    ]
    footer = (
        f'<p class="meta">refreshes every {REFRESH_SECONDS}s · JSON: '
        '<a href="/status">/status</a> · <a href="/healthz">/healthz</a> · '
        '<a href="/metrics">/metrics</a></p>'
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(sections)}{footer}</body></html>\n"
    )
