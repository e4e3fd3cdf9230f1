"""A running tiny server exports every metric the dashboard and the HPA use, and a real
Prometheus scrapes it: its query API returns `vllm:*` and `kimi_vl_*` series and evaluates every
dashboard query. One server and one Prometheus serve all tests here (session fixtures)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from .conftest import DASHBOARD, K8S, load_yaml
from .promql import dashboard_metric_names, dashboard_queries, exposed_series, metric_names

pytestmark = pytest.mark.slow


def _query(prometheus: str, promql: str) -> dict[str, Any]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (promql, body)
    return dict(body["data"])


def test_dashboard_and_hpa_metrics_exist_on_the_running_server(tiny_server: str) -> None:
    response = httpx.get(f"{tiny_server}/metrics", timeout=10)
    assert response.status_code == 200
    exposed = exposed_series(response.text)
    used = dashboard_metric_names(DASHBOARD)
    for rule in load_yaml(K8S / "prometheus-adapter-values.yaml")["rules"]["custom"]:
        for name in metric_names(rule["seriesQuery"]):
            used.setdefault(name, set()).add("prometheus-adapter (hpa.yaml)")
    missing = {name: panels for name, panels in used.items() if name not in exposed}
    assert not missing, f"used but not on /metrics: {missing}"


def test_prometheus_scrapes_vllm_and_our_metrics(prometheus: str) -> None:
    wanted = {
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "kimi_vl_http_requests_total",
    }
    deadline = time.monotonic() + 60
    while True:
        up = _query(prometheus, 'up{job="kimi-vl"}')["result"]
        names = httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=10).json()["data"]
        if up and up[0]["value"][1] == "1" and wanted <= set(names):
            break
        assert time.monotonic() < deadline, f"up={up}, missing {wanted - set(names)}"
        time.sleep(1)
    assert any(n.startswith("vllm:") for n in names) and any(
        n.startswith("kimi_vl_") for n in names
    )
    (waiting,) = _query(prometheus, "vllm:num_requests_waiting")["result"]
    assert waiting["metric"]["job"] == "kimi-vl" and float(waiting["value"][1]) >= 0


def test_prometheus_evaluates_every_dashboard_query(prometheus: str) -> None:
    """Valid PromQL for the Prometheus we ship against (Grafana variables filled in)."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for title, expr in dashboard_queries(dashboard):
        promql = expr.replace("$__rate_interval", "1m").replace("$model", ".*")
        assert _query(prometheus, promql)["resultType"] in {"vector", "matrix", "scalar"}, title
