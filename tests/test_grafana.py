"""grafana/: the dashboards type-check against Grafana's published schema (tsc), a broken
dashboard fails that check, the alert rules pass ``promtool check rules`` and their
unit tests (``promtool test rules``), which show every alert firing and not firing.

The real-Prometheus check of every query is in test_prometheus.py.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from listener.metrics import Metrics
from tests.support.grafana_queries import (
    DASHBOARDS,
    GRAFANA,
    RULE_TESTS,
    RULES,
    alert_rules,
    data_parts,
    load_dashboard,
    panels,
)

SCHEMA_CHECK = GRAFANA / "schema-check"


def require(path: str | None, what: str) -> str:
    """``path`` if the tool exists; without it fail under CI (which installs it), skip
    elsewhere."""
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing; .ci/run installs it")
    pytest.skip(f"{what} is missing")


def schema_check(*files: Path) -> subprocess.CompletedProcess[str]:
    node = require(shutil.which("node"), "node")
    require(
        str(SCHEMA_CHECK / "node_modules") if (SCHEMA_CHECK / "node_modules").is_dir() else None,
        "grafana/schema-check/node_modules (run `npm ci` there)",
    )
    return subprocess.run(
        [node, str(SCHEMA_CHECK / "check.mjs"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def exported_samples() -> set[str]:
    """The names a worker exports (samples, and histograms by their base name), with
    every labelled and sampled series set."""
    metrics = Metrics(tenants_opt_in=["t"])
    metrics.register_kinds(["k"])
    metrics.set_workers(1, 0.0, [("id", "host", 1, 0.0)])
    metrics.set_queue([], ["k"])
    metrics.set_tenant_backlog([], 0)
    metrics.set_rate_limited([])
    names = set()
    for family in metrics.registry.collect():
        names |= {sample.name for sample in family.samples}
        if family.type == "histogram":
            names.add(family.name)
    return names


def test_grafana_uses_only_exported_series() -> None:
    """Every pgwake_ name in the dashboards, the rules and their tests is one a worker
    exports (test_prometheus.py proves it with a real Prometheus; this needs none)."""
    texts = [p.read_text() for p in (*DASHBOARDS, RULES, RULE_TESTS)]
    # (pgwake_workers_* in a comment is a pattern, not a name.)
    used = {name for text in texts for name in re.findall(r"\bpgwake_\w+\b(?!\*)", text)}
    assert used
    assert used - exported_samples() == set()


def test_dashboards_exist() -> None:
    assert [p.name for p in DASHBOARDS] == ["pgwake-queue-health.json"]


def test_dashboards_type_check_against_grafana_schema() -> None:
    done = schema_check()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pgwake-queue-health.json: no errors" in done.stdout


def _first_stat(d: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in panels(d) if p["type"] == "stat")


def _first_timeseries(d: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in panels(d) if p["type"] == "timeseries")


def _prometheus_annotation(d: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in d["annotations"]["list"] if "target" in a)


# Each breaks a copy of the dashboard in one place: (what tsc must name, the change).
BREAKAGES: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "unknown top-level key": ("'\"refreshh\"' does not exist", lambda d: d.update(refreshh="1m")),
    "unknown panel key": (
        "'\"colour\"' does not exist",
        lambda d: _first_stat(d).update(colour="red"),
    ),
    "unknown option of the stat plugin": (
        "'\"sparkle\"' does not exist",
        lambda d: _first_stat(d)["options"].update(sparkle=True),
    ),
    "unknown field config of the timeseries plugin": (
        "'\"lineWidht\"' does not exist",
        lambda d: _first_timeseries(d)["fieldConfig"]["defaults"]["custom"].update(lineWidht=2),
    ),
    "unknown key in a query": (
        "'\"exp\"' does not exist",
        lambda d: _first_stat(d)["targets"][0].update(exp="up"),
    ),
    "bad enum value": (
        "'\"rainbow\"' is not assignable",
        lambda d: _first_stat(d)["options"].update(colorMode="rainbow"),
    ),
    "bad legend placement": (
        "'\"top\"' is not assignable",
        lambda d: _first_timeseries(d)["options"]["legend"].update(placement="top"),
    ),
    "string where a number belongs": (
        "Type 'string' is not assignable to type 'number'",
        lambda d: _first_stat(d)["gridPos"].update(w="6"),
    ),
    "missing required option": (
        "Property 'reduceOptions' is missing",
        lambda d: _first_stat(d)["options"].pop("reduceOptions"),
    ),
    "unknown key in an annotation": (
        "'\"titelFormat\"' does not exist",
        lambda d: _prometheus_annotation(d).update(titelFormat="{{alertname}}"),
    ),
    "unknown key in an annotation's query": (
        "'\"exprr\"' does not exist",
        lambda d: _prometheus_annotation(d)["target"].update(exprr="ALERTS"),
    ),
    "unknown panel type": (
        "'\"graph\"' is not assignable",
        lambda d: _first_stat(d).update(type="graph"),
    ),
}


def test_broken_dashboards_fail_the_type_check(tmp_path: Path) -> None:
    """One tsc run over one broken copy per breakage: each copy must fail, with an error
    naming what was broken at a line of that copy."""
    original = load_dashboard(DASHBOARDS[0])
    files = {}
    for name, (_, breakage) in BREAKAGES.items():
        broken = copy.deepcopy(original)
        breakage(broken)
        path = tmp_path / (re.sub(r"\W+", "-", name) + ".json")
        path.write_text(json.dumps(broken, indent=2))
        files[name] = path
    done = schema_check(*files.values())
    assert done.returncode == 1, done.stdout + done.stderr
    errors = done.stdout.splitlines()
    for name, (message, _) in BREAKAGES.items():
        mine = [e for e in errors if e.startswith(f"{files[name]}(")]
        assert any(message in e for e in mine), f"{name}: {message!r} not in {mine}"


def test_provisioning_files() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "pgwake-prometheus.yaml").read_text()
    )
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "pgwake.yaml").read_text()
    )
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
    # Every panel query goes to the data source the dashboard variable picks.
    dashboard = load_dashboard(DASHBOARDS[0])
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for annotation in dashboard["annotations"]["list"]:
        if not annotation.get("builtIn"):
            assert annotation["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def _panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    (panel,) = [p for p in panels(dashboard) if p.get("title") == title]
    return panel


def _exprs(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel.get("targets", [])]


def _threshold_color(panel: dict[str, Any], value: float) -> str:
    """The colour the panel's absolute thresholds give ``value``."""
    color = ""
    for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]:
        if step["value"] is None or value >= step["value"]:
            color = step["color"]
    return color


def test_a_dead_fleet_shows_a_red_zero() -> None:
    """With no worker left, no pgwake_ready series exists: the stat falls back to 0,
    which its thresholds colour red. (test_prometheus.py stops every worker and reads 0.)"""
    dashboard = load_dashboard(DASHBOARDS[0])
    ready = _panel(dashboard, "Workers ready")
    (expr,) = _exprs(ready)
    assert expr.endswith(" or vector(0)")
    assert _threshold_color(ready, 0) == "red"
    assert _threshold_color(ready, 1) == "green"
    down = _panel(dashboard, "Targets down")
    assert _threshold_color(down, 0) == "green"
    assert _threshold_color(down, 1) == "red"


def test_failure_is_what_the_alerts_call_failure() -> None:
    """The failure shares count attempts that failed for good, as
    PgwakeJobFailureRateHigh does; retries are a share of their own."""
    dashboard = load_dashboard(DASHBOARDS[0])
    (rule,) = [r for r in alert_rules() if r["alert"] == "PgwakeJobFailureRateHigh"]
    assert 'outcome="failed"' in rule["expr"]
    for title in ("Failed for good", "Failed for good by kind"):
        (expr,) = _exprs(_panel(dashboard, title))
        numerator = expr.split(" / ")[0]
        assert 'outcome="failed"' in numerator, title
        assert "retried" not in expr, title
    (expr,) = _exprs(_panel(dashboard, "Retried by kind"))
    assert 'outcome="retried"' in expr.split(" / ")[0]


def test_rates_are_in_units_of_what_they_count() -> None:
    """No panel shows jobs as requests: a rate of a counter is in count:<what>/s."""
    for panel in panels(load_dashboard(DASHBOARDS[0])):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        assert unit not in {"reqps", "rps", "ops", "opm", "rpm", "wps"}, panel["title"]
        exprs = _exprs(panel)
        if any("rate(" in e and "histogram_quantile" not in e and " / " not in e for e in exprs):
            assert re.fullmatch(r"count:[\w-]+/s", unit), (panel["title"], unit)


def test_event_counts_are_bars_of_a_fixed_interval() -> None:
    """A panel of increase() draws bars, each the events of its own interval, at least
    5 minutes: the count per bar does not change with the zoom up to a week."""
    bar_panels = 0
    for panel in panels(load_dashboard(DASHBOARDS[0])):
        exprs = [e for e in _exprs(panel) if "increase(" in e]
        if not exprs:
            continue
        bar_panels += 1
        assert all("[$__interval]" in e for e in exprs), panel["title"]
        assert panel["interval"] == "5m", panel["title"]
        assert panel["maxDataPoints"] * 5 * 60 >= 7 * 24 * 3600, panel["title"]
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["custom"]["drawStyle"] == "bars", panel["title"]
        assert defaults["decimals"] == 0, panel["title"]
    assert bar_panels >= 4


def test_scrape_health_stays_within_the_pgwake_jobs() -> None:
    """The job variable's All is the list of pgwake jobs (no allValue: a regex of all
    of them), so ``up{job=~"$job"}`` never reads the targets of other jobs."""
    dashboard = load_dashboard(DASHBOARDS[0])
    (job,) = [v for v in dashboard["templating"]["list"] if v["name"] == "job"]
    assert job["includeAll"]
    assert "allValue" not in job
    ups = [e for p in panels(dashboard) for e in _exprs(p) if re.search(r"\bup\{", e)]
    assert len(ups) >= 2
    assert all('job=~"$job"' in e for e in ups)


def promtool() -> str:
    return require(shutil.which("promtool"), "promtool (Debian package prometheus)")


def test_promtool_check_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_promtool_test_rules() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown not firing"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


def test_every_alert_has_a_for_duration_and_a_runbook() -> None:
    for rule in alert_rules():
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


@pytest.mark.parametrize(
    ("expr", "parts"),
    [
        ("a > 0.05 and b >= 5", ["a", "b"]),
        ("sum by (job) (x) < 1 or absent(y)", ["sum by (job) (x)", "y"]),
        ("a / b > 0.9 and on (job) max by (job) (c) > 60", ["a / b", "max by (job) (c)"]),
        ("h(a[15m]) > 2 * h(a[1d])", ["h(a[15m])", "2 * h(a[1d])"]),
        ('x{l=~"a>b|c", m!="or"} == 0', ['x{l=~"a>b|c", m!="or"}']),
        ("vector(1) > bool 0", ["vector(1)"]),
        ("absent_over_time(up[5m])", ["up"]),
        ("orange unless order", ["orange", "order"]),
    ],
)
def test_data_parts(expr: str, parts: list[str]) -> None:
    assert data_parts(expr) == parts
