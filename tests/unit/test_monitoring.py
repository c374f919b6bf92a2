"""The monitoring files under packaging/: the Prometheus rules and the Grafana dashboard
are valid, name only metrics evsync exports, and agree with docs/operations.md."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from evsync.metrics import Metrics
from tests.helpers import REPO, require_tool

RULES = REPO / "packaging" / "prometheus" / "evsync-rules.yml"
RULES_TESTS = REPO / "packaging" / "prometheus" / "evsync-rules.test.yml"
DASHBOARD = REPO / "packaging" / "grafana" / "evsync-dashboard.json"
OPERATIONS = REPO / "docs" / "operations.md"
PROMTOOL_TIMEOUT_SECONDS = 60
METRIC_NAME = re.compile(r"\bevsync_[a-zA-Z0-9_]+")
# the sample names a family of each type exposes in the text format
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Every sample name evsync's /metrics can serve, read off its ``# TYPE`` lines (every
    family is declared there even before it has a sample)."""
    metrics = Metrics()
    metrics.add_state_collector(lambda: {})
    names = set()
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            if kind == "counter":  # declared with or without its _total
                family = family.removesuffix("_total")
            names.update(family + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return names


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return result


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def documented_alerts() -> dict[str, str]:
    """{alert: expr} of the YAML block under "Alerts worth setting" in operations.md."""
    text = OPERATIONS.read_text()
    section = text[text.index("### Alerts worth setting"):]
    block = section[section.index("```yaml") + len("```yaml"):]
    block = block[: block.index("```")]
    data = yaml.safe_load(block)
    return {r["alert"]: r["expr"] for g in data["groups"] for r in g["rules"]}


def squash(expr: str) -> str:
    return " ".join(expr.split())


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    binary = require_tool("promtool")
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=PROMTOOL_TIMEOUT_SECONDS, check=False)


class TestRulesFile:
    """packaging/prometheus/evsync-rules.yml."""

    @pytest.mark.parametrize("path", [RULES, RULES_TESTS], ids=["rules", "tests"])
    def test_the_files_are_plain_yaml(self, path: Path) -> None:
        """The rules and their tests parse as YAML mappings (what promtool reads)."""
        assert isinstance(yaml.safe_load(path.read_text()), dict)

    def test_promtool_accepts_the_rules(self) -> None:
        """`promtool check rules` finds every rule valid."""
        done = promtool("check", "rules", str(RULES.relative_to(REPO)))
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"SUCCESS: {len(rules())} rules found" in done.stdout

    def test_the_alerts_fire_as_intended(self) -> None:
        """`promtool test rules` on the shipped unit tests: the alerts fire (and stay quiet)
        on the series they are meant for, with their texts filled in."""
        done = promtool("test", "rules", RULES_TESTS.name, cwd=RULES_TESTS.parent)
        assert done.returncode == 0, done.stdout + done.stderr

    def test_every_metric_named_is_exported(self) -> None:
        """Each evsync_* name in a rule is a sample name evsync's /metrics serves."""
        exported = exported_names()
        named = {m for rule in rules() for m in METRIC_NAME.findall(rule["expr"])}
        assert named and named <= exported, sorted(named - exported)

    def test_the_rules_are_the_documented_alerts(self) -> None:
        """The rules file holds exactly the alerts operations.md lists, with the same
        expressions; each has a severity and a summary."""
        shipped = {r["alert"]: squash(r["expr"]) for r in rules()}
        documented = {name: squash(expr) for name, expr in documented_alerts().items()}
        assert shipped == documented
        for rule in rules():
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


class TestDashboard:
    """packaging/grafana/evsync-dashboard.json."""

    def test_the_datasource_is_a_variable(self) -> None:
        """A `datasource` variable of type prometheus, and every panel and query uses it."""
        dash = dashboard()
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in dash["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]

    def test_every_metric_named_is_exported(self) -> None:
        """Each evsync_* name in a panel's query is a sample name evsync's /metrics serves."""
        exported = exported_names()
        named = {m for expr in dashboard_exprs() for m in METRIC_NAME.findall(expr)}
        assert named and named <= exported, sorted(named - exported)

    def test_every_alert_has_its_panel(self) -> None:
        """Every metric an alert watches is drawn, and so are lag, rejections, store and
        load failures and health; panel ids are unique and none overlap."""
        drawn = {m for expr in dashboard_exprs() for m in METRIC_NAME.findall(expr)}
        alerted = {m for rule in rules() for m in METRIC_NAME.findall(rule["expr"])}
        assert alerted <= drawn, sorted(alerted - drawn)
        assert {
            "evsync_propagation_lag_seconds_bucket",
            "evsync_objects_rejected_total",
            "evsync_store_failures_total",
            "evsync_load_failures_total",
            "evsync_health_check",
        } <= drawn
        panels = dashboard()["panels"]
        assert len({p["id"] for p in panels}) == len(panels)
        cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels]
        assert len(set(cells)) == len(cells)
