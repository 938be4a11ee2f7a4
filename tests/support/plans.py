"""Query plans (``EXPLAIN (FORMAT JSON)``) read as a flat list of nodes."""

from __future__ import annotations

from typing import Any


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of ``plan``, the root first, depth first."""
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(nodes(child))
    return found
