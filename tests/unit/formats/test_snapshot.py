"""Every field of a stats snapshot is in every rendering (NDJSON, the worker stream, Prometheus), or the
one table says why not: a field added to the snapshot or to one rendering fails here until all agree."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kstap.cli.outputs import snapshot_fields
from kstap.contracts import AlertLevel
from kstap.formats import snapshot as fmt
from kstap.metrics import MetricsServer
from kstap.model import Alert, ControllerState, ResourceStats, StatsSnapshot, WorkerStats
from kstap.remote.hub import snapshot_json

CHANGED: dict[str, Any] = {
    "elapsed": 12.5, "mode": "auto", "profile": "prod", "filter": "tcp port 80", "targets": ["veth1"],
    "output": "/tmp/x.pcapng", "rate": 0.25, "captured": 901, "bytes_captured": 90_001, "received": 1_001,
    "dropped": 31, "duplicates": 41, "sampled_out": 51, "left_out": 61, "packets_per_second": 71.5,
    "flows_tracked": 81, "dissect_memory": 91,
    "workers": [WorkerStats(worker=0, node="n1", captured=5, alive=False, restarts=2)],
    "controller": ControllerState(pressure=0.91, rate=0.25, reason="memory"),
    "resources": ResourceStats(memory_bytes=7 << 20, memory_limit=64 << 20, cpu_cores=0.3, cpu_limit=1.0,
                               throttled_periods=3, oom_events=1),
    "alerts": [Alert(time=1.0, level=AlertLevel.WARN, kind="drops", message="ring full")],
    "top_endpoints": [("10.0.0.1:80", 9)],
    "rate_history": [(1.0, 0.5)], "memory_history": [(1.0, 0.2)],
}
"""A value other than the default for every field of the snapshot (a new field needs one here)."""


def base() -> StatsSnapshot:
    return StatsSnapshot(resources=ResourceStats(memory_bytes=1 << 20), controller=ControllerState(),
                         workers=[WorkerStats(worker=0)])


def prometheus(s: StatsSnapshot) -> dict[str, list[tuple[dict[str, str], float]]]:
    server = MetricsServer(0)  # never started: the registry is rendered directly
    server.update(s)
    text = generate_latest(server.registry).decode()
    return {f.name: [(x.labels, x.value) for x in f.samples] for f in text_string_to_metric_families(text)}


RENDERINGS = {
    "ndjson": lambda s: json.dumps(snapshot_fields(s), sort_keys=True),
    "stream": lambda s: json.dumps(snapshot_json(s), sort_keys=True),
    "prometheus": lambda s: json.dumps(prometheus(s), sort_keys=True, default=str),
}


def test_the_table_has_every_field_of_the_snapshot() -> None:
    names = [f.name for f in dataclasses.fields(StatsSnapshot)]
    assert sorted(fmt.FIELDS) == sorted(names)
    assert sorted(CHANGED) == sorted(names)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(StatsSnapshot)])
def test_each_field_is_in_each_rendering_or_says_why_not(name: str) -> None:
    row = fmt.FIELDS[name]
    changed = dataclasses.replace(base(), **{name: CHANGED[name]})
    for rendering, render in RENDERINGS.items():
        how = getattr(row, rendering)
        if isinstance(how, str):
            assert len(how) > 20, f"{name}: say why {rendering} leaves it out"
            assert render(changed) == render(base()), f"{name} is in {rendering}, the table says it is not"
        else:
            assert render(changed) != render(base()), f"{name} is missing from {rendering}"


def test_prometheus_has_the_families_the_table_names() -> None:
    scraped = prometheus(dataclasses.replace(base(), **CHANGED))
    for family in fmt.prometheus_families():
        assert family in scraped, family
    assert scraped["kstap_packets_duplicates"] == [({}, 41.0)]


def test_the_json_renderings_keep_their_shapes() -> None:
    s = dataclasses.replace(base(), **CHANGED)
    ndjson, stream = snapshot_fields(s), snapshot_json(s)
    assert list(ndjson) == ["elapsed", "mode", "rate", "captured", "bytes_captured", "received", "dropped",
                            "drop_ratio", "duplicates", "sampled_out", "left_out", "packets_per_second",
                            "flows_tracked", "dissect_memory", "workers", "controller", "resources",
                            "top_endpoints"]
    assert ndjson["top_endpoints"] == [{"endpoint": "10.0.0.1:80", "count": 9}]
    assert stream["top_endpoints"] == [["10.0.0.1:80", 9]] and stream["filter"] == "tcp port 80"
    assert stream["resources"]["oom_events"] == 1 and stream["left_out"] == 61
