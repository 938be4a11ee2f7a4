"""grafana/prometheus/alertmanager-example.yml: ``amtool check-config`` accepts it,
every alert its inhibit rules name exists, and in a real Alertmanager one database
outage leaves one alert active: the alerts it explains are inhibited, for that scrape
job only."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import yaml

from tests.support.grafana_queries import GRAFANA, alert_rules
from tests.support.prometheus import free_port, get_json, post_json, require_tool, stop
from tests.support.waiting import eventually

EXAMPLE = GRAFANA / "prometheus" / "alertmanager-example.yml"


def test_amtool_check_config() -> None:
    amtool = require_tool("amtool", "prometheus-alertmanager")
    done = subprocess.run(
        [amtool, "check-config", str(EXAMPLE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    assert "4 inhibit rules" in done.stdout


def names_matched(matcher: str) -> set[str]:
    """The alert names an ``alertname="..."`` or ``alertname=~"a|b"`` matcher names."""
    found = re.fullmatch(r'alertname(=~?)"([^"]*)"', matcher)
    assert found, matcher
    return set(found.group(2).split("|"))


def test_inhibit_rules_name_existing_alerts_and_critical_sources() -> None:
    config = yaml.safe_load(EXAMPLE.read_text())
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in alert_rules()}
    for rule in config["inhibit_rules"]:
        sources = set().union(*map(names_matched, rule["source_matchers"]))
        targets = set().union(*map(names_matched, rule["target_matchers"]))
        assert sources | targets <= set(severity), (sources | targets) - set(severity)
        assert {severity[name] for name in sources} == {"critical"}, sources
        assert not sources & targets
        assert "job" in rule["equal"]


def alert(name: str, **labels: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "labels": {"alertname": name, **labels},
        "annotations": {"summary": name},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=10)).isoformat(),
    }


async def test_one_database_outage_gives_one_active_alert(tmp_path: Path) -> None:
    binary = require_tool("prometheus-alertmanager", "prometheus-alertmanager")
    port = free_port()
    with (tmp_path / "alertmanager.log").open("w") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={EXAMPLE}",
                f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:

        async def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "alertmanager.log").read_text())
            try:
                await anyio.to_thread.run_sync(get_json, port, "/api/v2/status")
            except OSError:
                return False
            return True

        await eventually(up, timeout=30, interval=0.2)
        # What one outage of job pgwake's database fires, and one alert of another
        # fleet (pgwake-eu) that the outage does not explain.
        sent = [
            alert("PgwakeDatabaseUnreachable", job="pgwake", severity="critical"),
            alert("PgwakeNoWorkerReady", job="pgwake", severity="critical"),
            alert("PgwakeListenerDown", job="pgwake", instance="w1", severity="warning"),
            alert("PgwakeListenerDown", job="pgwake", instance="w2", severity="warning"),
            alert("PgwakeNoMetricsLeader", job="pgwake", severity="warning"),
            alert("PgwakeTargetDown", job="pgwake", instance="w3", severity="warning"),
            alert("PgwakeListenerDown", job="pgwake-eu", instance="e1", severity="warning"),
        ]
        post_json(port, "/api/v2/alerts", sent)

        async def states() -> dict[tuple[str, str], str] | None:
            alerts = await anyio.to_thread.run_sync(get_json, port, "/api/v2/alerts")
            found = {
                (a["labels"]["alertname"], a["labels"].get("instance", "")): a["status"]["state"]
                for a in alerts
            }
            # Inhibition is computed as alerts arrive; wait until all are placed.
            if len(found) < len(sent) or "unprocessed" in found.values():
                return None
            return found

        found = await eventually(states, timeout=30)
        assert found == {
            ("PgwakeDatabaseUnreachable", ""): "active",
            # Explained by the outage:
            ("PgwakeNoWorkerReady", ""): "suppressed",
            ("PgwakeListenerDown", "w1"): "suppressed",
            ("PgwakeListenerDown", "w2"): "suppressed",
            ("PgwakeNoMetricsLeader", ""): "suppressed",
            # Explained by the fleet's no-ready alert:
            ("PgwakeTargetDown", "w3"): "suppressed",
            # Another job's alert is not the outage's.
            ("PgwakeListenerDown", "e1"): "active",
        }
    finally:
        stop(proc)
