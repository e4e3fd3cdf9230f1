"""Metric names in PromQL (dashboard panels, adapter rules) and the series our collectors export."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from server import metrics

_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
}
_SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects: identifiers that are not functions, keywords,
    label names (in matchers or grouping clauses) or durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = _GROUPING.sub("", expr)
    names = set()
    for match in re.finditer(r"(?<![\w:$.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group(0)
        if word in _KEYWORDS or expr[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every panel target and templating query of a Grafana dashboard."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            yield panel.get("title", "?"), target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("definition", "")
        inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
        yield f"${variable['name']}", inner.group(1) if inner else query


def dashboard_metric_names(path: Path) -> dict[str, set[str]]:
    """Series name -> titles of the panels using it."""
    used: dict[str, set[str]] = {}
    for title, expr in dashboard_queries(json.loads(path.read_text(encoding="utf-8"))):
        for name in metric_names(expr):
            used.setdefault(name, set()).add(title)
    return used


def kimi_vl_series() -> set[str]:
    """Series names of every collector defined in server/metrics.py."""
    series: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name, kind = value._name, str(value._type)  # no public accessor
            series.update(name + suffix for suffix in _SERIES_SUFFIXES[kind])
    return series


def exposed_series(exposition: str) -> set[str]:
    """Series names a /metrics page offers: its samples plus, from the # TYPE lines, the series
    of families that have no sample yet (labelled metrics before their first observation)."""
    series: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            base = family.removesuffix("_total") if kind == "counter" else family
            series.update(base + suffix for suffix in _SERIES_SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            series.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return series
