"""examples/grafana-dashboard.json and examples/prometheus-rules.yml against what kstap really serves.

- Every PromQL query (panels, template variables, rules) names only metrics that a real
  :class:`kstap.metrics.MetricsServer`, fed a capture's snapshot and summary, serves on /metrics
  (scraped over HTTP here), or recording rules the rules file defines.
- The dashboard loads into Grafana's dashboard schema: it goes through the Dashboard model of
  grafana-foundation-sdk (PyPI; types generated from Grafana's own schema kinds) and back without
  losing or changing a field, and meets the documented model's rules the SDK does not check (unique
  panel ids, gridPos inside the 24-column grid, datasource references, a row's repeat variable exists).
- ``promtool check rules`` (Debian's prometheus package) accepts the rules.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kstap.contracts import AlertRaised
from kstap.dashboard import samples
from kstap.metrics import MetricsServer
from kstap.model import CaptureSummary
from kstap.vocabulary import AlertLevel
from tests.conftest import ROOT

DASHBOARD = ROOT / "examples" / "grafana-dashboard.json"
RULES = ROOT / "examples" / "prometheus-rules.yml"
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "inf", "nan"}


def served_metrics() -> set[str]:
    """Sample names on a live /metrics after a snapshot with resources, workers and an alert, and a summary."""
    with MetricsServer(0) as server:
        snap = samples.ALL["several_workers"]()
        snap.left_out = 10
        server.progress(snap)
        server.event(AlertRaised(AlertLevel.WARN, "drops", "x"))
        server.summary(CaptureSummary(captured=1, received=2))
        text = urllib.request.urlopen(server.url, timeout=10).read().decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, labels, ranges and strings left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)                 # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                # range selectors, $__rate_interval
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"(?<![\w$])([A-Za-z_:][\w:]*)\s*(\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q)
            assert m, q
            queries.append(m.group(1))
    return queries


def rules() -> list[dict[str, Any]]:
    return [r for group in yaml.safe_load(RULES.read_text())["groups"] for r in group["rules"]]


def test_metric_names_are_parsed_from_promql() -> None:
    assert metric_names('sum by (level, kind) (increase(kstap_alerts_total{instance=~"$i"}[$__range]))') == \
        {"kstap_alerts_total"}
    assert metric_names("a / clamp_min(rate(b[5m]), 1) > 0.01 and on (instance) c{x=\"y\"} == 0") == {"a", "b", "c"}


def test_every_query_names_a_metric_the_exporter_serves() -> None:
    served = served_metrics()
    assert {"kstap_sampling_rate", "kstap_packets_dropped_total", "kstap_memory_limit_bytes",
            "kstap_worker_up", "kstap_packets_left_out_total"} <= served
    recorded = {r["record"] for r in rules() if "record" in r}
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard) + [r["expr"] for r in rules()]
    used = set().union(*(metric_names(q) for q in queries))
    assert used, "no metric found in the queries"
    unknown = used - served - recorded
    assert unknown == set(), f"queries name metrics kstap does not serve: {sorted(unknown)}"
    panels = {p["title"]: p for p in _panels(dashboard)}
    for title, wanted in (("Sampling rate", "kstap_sampling_rate"), ("Kernel drops", "kstap_packets_dropped_total"),
                          ("Memory", "kstap_memory_limit_bytes"), ("CPU", "kstap_cpu_limit_cores")):
        assert wanted in "".join(t["expr"] for t in panels[title]["targets"])
    assert any(p["type"] == "alertlist" for p in panels.values())
    assert any(p.get("repeat") == "node" for p in dashboard["panels"] if p["type"] == "row")


def test_the_dashboard_loads_into_grafanas_schema() -> None:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    data = json.loads(DASHBOARD.read_text())
    loaded = json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder))
    lost: list[str] = []

    def same(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict):
            assert isinstance(b, dict), path
            for key, value in a.items():
                if key not in b:
                    lost.append(f"{path}/{key}")
                else:
                    same(value, b[key], f"{path}/{key}")
        elif isinstance(a, list):
            assert isinstance(b, list) and len(a) == len(b), path
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                same(x, y, f"{path}[{i}]")
        else:
            assert a == b, f"{path}: {a!r} became {b!r}"

    same(data, loaded, "")
    assert lost == [], f"fields Grafana's dashboard schema does not have: {lost}"
    # the documented model's rules the SDK's loader does not enforce
    assert isinstance(data["title"], str) and data["title"] and isinstance(data["schemaVersion"], int)
    ids = [p["id"] for p in _panels(data)]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in data["templating"]["list"]}
    for p in _panels(data):
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        assert p["type"] in ("row", "timeseries", "bargauge", "alertlist", "stat"), p["type"]
        for t in p.get("targets", []):
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and t["refId"]
        for var in re.findall(r"\$(\w+)", json.dumps(p)):
            assert var.startswith("__") or var in variables, var


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool comes with Debian's prometheus package")
def test_promtool_accepts_the_rules() -> None:
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout
