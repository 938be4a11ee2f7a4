"""Real Prometheus and Alertmanager processes for the alert tests: the tools (skipped
without them, failing under CI, which installs them), free ports, their HTTP APIs, and a
Prometheus started on a rules file with the scrape jobs a test gives.

Each process is started by the test and stopped in its ``finally``; their logs go to
files in the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from listener.cli.bench.common import free_port


def require_tool(name: str, package: str) -> str:
    """The path of the executable ``name``; without it fail under CI (which installs
    Debian's ``package``), skip elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is missing; .ci/run installs the Debian package {package}")
    pytest.skip(f"{name} is missing (Debian package {package})")


def _open(request: str | urllib.request.Request) -> Any:
    """urlopen, closing the response an HTTP error status comes with before raising:
    callers that poll a server while it starts catch the error (an OSError), and an
    HTTPError left open keeps its socket until the garbage collector finds it, when its
    ResourceWarning fails whichever test is running then."""
    try:
        return urllib.request.urlopen(request, timeout=10)  # noqa: S310 - local http
    except urllib.error.HTTPError as exc:
        exc.close()
        raise


def get_json(port: int, path: str) -> Any:
    """GET http://127.0.0.1:{port}{path}, as JSON."""
    with _open(f"http://127.0.0.1:{port}{path}") as resp:
        return json.load(resp)


def post_json(port: int, path: str, body: Any) -> None:
    """POST ``body`` as JSON to http://127.0.0.1:{port}{path}."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with _open(request) as resp:
        assert resp.status == 200, resp.status


def prometheus_api(port: int, path: str, **params: str) -> Any:
    """The ``data`` of a Prometheus HTTP API answer (which must be a success)."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    body = get_json(port, f"/api/v1/{path}{query}")
    assert body["status"] == "success", body
    return body["data"]


def start_prometheus(
    directory: Path,
    rules: Path,
    scrape_configs: list[dict[str, Any]],
    *,
    interval: str = "1s",
    port: int | None = None,
) -> tuple[subprocess.Popen[str], int]:
    """Prometheus on ``port`` (default: a free one), scraping and evaluating every
    ``interval``."""
    binary = require_tool("prometheus", "prometheus")
    port = port or free_port()
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rules)],
        "scrape_configs": scrape_configs,
    }
    (directory / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    with (directory / "prometheus.log").open("w") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return proc, port


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL if it does not exit within 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
