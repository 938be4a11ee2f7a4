"""The PromQL of grafana/: every panel, annotation and variable query of the dashboards,
every alert expression of the rules, and the parts of an alert expression that must
return data.

An alert expression with a threshold (``X > 300``) is empty while all is well, so it
proves nothing about the series it reads. :func:`data_parts` takes it apart at its
top-level set operators (``and``, ``or``, ``unless``) and comparisons, drops number
literals and unwraps ``absent(...)``; each part left is a query that must return data
once the workers run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import ROOT

GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES = GRAFANA / "prometheus" / "pgwake-alerts.yml"
RULE_TESTS = GRAFANA / "prometheus" / "pgwake-alerts.test.yml"

_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$", re.DOTALL)
_SET_OPERATORS = ("and", "or", "unless")
_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
_MODIFIER = re.compile(
    r"^\s*(?:bool\b\s*)?(?:(?:on|ignoring)\s*\([^)]*\)\s*)?"
    r"(?:(?:group_left|group_right)\s*(?:\([^)]*\))?\s*)?"
)
_NUMBER = re.compile(r"^\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*$")
_IDENT = re.compile(r"[A-Za-z0-9_:]")


def load_dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with the dashboard variables (``$name`` and ``${name}``) replaced;
    KeyError for a variable not in ``variables``."""
    return _VARIABLE.sub(lambda m: variables[m.group(1) or m.group(2)], expr)


def panel_queries(dashboard: dict[str, Any], variables: dict[str, str]) -> list[tuple[str, str]]:
    """(panel title and refId, PromQL) of every query of every panel."""
    return [
        (f"{panel['title']} [{target['refId']}]", substitute(target["expr"], variables))
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def annotation_queries(
    dashboard: dict[str, Any], variables: dict[str, str]
) -> list[tuple[str, str]]:
    """(annotation name, PromQL) of every annotation that queries a data source (not
    Grafana's built-in one)."""
    return [
        (annotation["name"], substitute(annotation["target"]["expr"], variables))
        for annotation in dashboard.get("annotations", {}).get("list", [])
        if "expr" in annotation.get("target", {})
    ]


def variable_queries(dashboard: dict[str, Any], variables: dict[str, str]) -> list[tuple[str, str]]:
    """(variable name, PromQL) for each query variable: ``label_values(m, l)`` becomes
    ``count by (l) (m)``, which returns data exactly when the variable has values."""
    queries = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(substitute(text, variables).strip())
        assert match, f"variable {variable['name']}: not a label_values query: {text}"
        metric, label = match.groups()
        queries.append((variable["name"], f"count by ({label}) ({metric})"))
    return queries


def alert_rules(path: Path = RULES) -> list[dict[str, Any]]:
    """Every alerting rule of a rules file."""
    data = yaml.safe_load(path.read_text())
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def _top_level(expr: str, operators: tuple[str, ...], *, words: bool) -> list[tuple[int, int]]:
    """Positions (start, end) of ``operators`` outside brackets and strings; with
    ``words``, only where they stand as words."""
    found: list[tuple[int, int]] = []
    depth = 0
    quote: str | None = None
    i = 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            for op in operators:
                if not expr.startswith(op, i):
                    continue
                end = i + len(op)
                if words and (
                    (i > 0 and _IDENT.match(expr[i - 1]))
                    or (end < len(expr) and _IDENT.match(expr[end]))
                ):
                    continue
                found.append((i, end))
                i = end - 1
                break
        i += 1
    return found


def _split(expr: str, operators: tuple[str, ...], *, words: bool) -> list[str]:
    parts, start = [], 0
    for begin, end in _top_level(expr, operators, words=words):
        parts.append(expr[start:begin])
        start = end
    parts.append(expr[start:])
    return [_MODIFIER.sub("", part, count=1).strip() for part in parts]


def data_parts(expr: str) -> list[str]:
    """The sub-queries of an alert expression that must each return data (see the
    module docstring)."""
    result = []
    for operand in _split(expr, _SET_OPERATORS, words=True):
        for side in _split(operand, _COMPARISONS, words=False):
            if _NUMBER.match(side):
                continue
            absent = re.fullmatch(r"absent(?:_over_time)?\s*\((.*)\)", side, re.DOTALL)
            if absent:
                inner = absent.group(1).strip()
                result.extend(data_parts(re.sub(r"\[[^\]]*\]$", "", inner)))
            else:
                result.append(side)
    return result
