"""The stats snapshot's fields and their three renderings, in one table so none is forgotten in one.

A :class:`kstap.model.StatsSnapshot` goes out three ways:

- **NDJSON**: the ``stats`` event of ``--json`` and ``--stats-file`` (:func:`ndjson`);
- **the worker stream**: a node worker's ``stats`` EVENT and its ``/v1/stats`` (:func:`stream`;
  :func:`kstap.remote.hub.snapshot_json` makes it JSON-safe);
- **Prometheus exposition**: ``/metrics`` (:mod:`kstap.metrics` renders the families
  :data:`FIELDS` names).

:data:`FIELDS` has one row per field of the snapshot, and each row says, for each rendering, how
the field is written or why it is not there. The two JSON renderings are built from the table;
``tests/unit/formats/test_snapshot.py`` checks that the table has every field of the snapshot and
that each field the table gives a rendering changes that rendering's output, so a field added to
the snapshot, or to one rendering, fails until every rendering has it or says why not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from kstap.model import StatsSnapshot

Keys = dict[str, object]
Render = Callable[[StatsSnapshot], Keys]
"""The keys (usually one) a field gives in a JSON rendering."""


@dataclass(frozen=True)
class Field:
    """Where one snapshot field goes in each rendering; a ``str`` says why the rendering leaves it out."""

    ndjson: Render | str
    stream: Render | str
    prometheus: tuple[str, ...] | str
    """The metric families (names without ``_total``) that carry the field."""


def finite(x: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def _plain(name: str) -> Render:
    return lambda s: {name: getattr(s, name)}


def _workers(s: StatsSnapshot) -> Keys:
    return {"workers": [{"worker": w.worker, "node": w.node, "alive": w.alive, "restarts": w.restarts,
                         "captured": w.captured, "received": w.received, "dropped": w.dropped,
                         "rate": finite(w.rate)} for w in s.workers]}


def _controller(s: StatsSnapshot) -> Keys:
    c = s.controller
    return {"controller": None if c is None else {
        "pressure": finite(c.pressure), "setpoint": finite(c.setpoint), "error": finite(c.error),
        "p_term": finite(c.p_term), "i_term": finite(c.i_term), "d_term": finite(c.d_term),
        "rate": finite(c.rate), "reason": c.reason}}


def _resources(s: StatsSnapshot) -> Keys:
    r = s.resources
    return {"resources": None if r is None else {
        "memory_bytes": r.memory_bytes, "memory_limit": r.memory_limit, "cpu_cores": finite(r.cpu_cores),
        "cpu_limit": finite(r.cpu_limit), "throttled_periods": r.throttled_periods, "oom_events": r.oom_events,
        "psi_memory_some": finite(r.psi_memory_some), "psi_memory_full": finite(r.psi_memory_full),
        "source": r.source}}


_RUN_INFO = "the run's settings: the start event carries them (they do not change during a run)"
_SETTING = "a setting, not a measurement: the start event and the dashboard's header carry it"
_HISTORY = "a history: the reader keeps its own from the snapshots"

FIELDS: dict[str, Field] = {
    "elapsed": Field(lambda s: {"elapsed": round(s.elapsed, 3)}, _plain("elapsed"),
                     "a scrape carries its own time"),
    "mode": Field(_plain("mode"), _plain("mode"), _SETTING),
    "profile": Field(_RUN_INFO, "the client's setting: a worker runs with the settings it was given", _SETTING),
    "filter": Field(_RUN_INFO, _plain("filter"), _SETTING),
    "targets": Field(_RUN_INFO, "the worker's hello lists its interfaces", _SETTING),
    "output": Field(_RUN_INFO, "a worker streams; the client writes the file", _SETTING),
    "rate": Field(lambda s: {"rate": finite(s.rate)}, _plain("rate"), ("kstap_sampling_rate",)),
    "captured": Field(_plain("captured"), _plain("captured"), ("kstap_packets_captured",)),
    "bytes_captured": Field(_plain("bytes_captured"), _plain("bytes_captured"), ("kstap_bytes_captured",)),
    "received": Field(_plain("received"), _plain("received"), ("kstap_packets_received",)),
    "dropped": Field(lambda s: {"dropped": s.dropped, "drop_ratio": finite(round(s.drop_ratio, 6))},
                     _plain("dropped"), ("kstap_packets_dropped",)),
    "duplicates": Field(_plain("duplicates"), _plain("duplicates"), ("kstap_packets_duplicates",)),
    "sampled_out": Field(_plain("sampled_out"), _plain("sampled_out"), ("kstap_packets_sampled_out",)),
    "left_out": Field(_plain("left_out"), _plain("left_out"), ("kstap_packets_left_out",)),
    "packets_per_second": Field(lambda s: {"packets_per_second": finite(round(s.packets_per_second, 3))},
                                _plain("packets_per_second"), ("kstap_packets_per_second",)),
    "flows_tracked": Field(_plain("flows_tracked"), _plain("flows_tracked"), ("kstap_flows_tracked",)),
    "dissect_memory": Field(_plain("dissect_memory"), _plain("dissect_memory"), ("kstap_dissect_memory_bytes",)),
    "workers": Field(_workers, "a worker is one row: the client builds the rows from its streams",
                     ("kstap_workers", "kstap_worker_up", "kstap_worker_sampling_rate",
                      "kstap_worker_captured_packets", "kstap_worker_received_packets",
                      "kstap_worker_dropped_packets", "kstap_worker_restarts")),
    "controller": Field(_controller,
                        lambda s: {"controller": asdict(s.controller) if s.controller else None},
                        ("kstap_pressure",)),
    "resources": Field(_resources, lambda s: {"resources": asdict(s.resources) if s.resources else None},
                       ("kstap_memory_working_set_bytes", "kstap_memory_limit_bytes", "kstap_cpu_cores",
                        "kstap_cpu_limit_cores", "kstap_cpu_throttled_periods", "kstap_oom_events")),
    "alerts": Field("each alert is an alert event of its own", "each alert is an EVENT alert of its own",
                    "counted from the alert events as kstap_alerts_total{level,kind}: each alert once, "
                    "where the snapshot holds the latest 20"),
    "top_endpoints": Field(lambda s: {"top_endpoints": [{"endpoint": name, "count": n}
                                                        for name, n in s.top_endpoints]},
                           lambda s: {"top_endpoints": [list(e) for e in s.top_endpoints]},
                           "endpoints as label values have no bound on their number (Prometheus advises "
                           "against that); the NDJSON stats and the dashboard have them"),
    "rate_history": Field(_HISTORY, _HISTORY, "Prometheus keeps the history of kstap_sampling_rate itself"),
    "memory_history": Field(_HISTORY, _HISTORY,
                            "Prometheus keeps the history of kstap_memory_working_set_bytes itself"),
}
"""One row per field of :class:`kstap.model.StatsSnapshot`, in the order the JSON renderings write them."""


def ndjson(s: StatsSnapshot) -> Keys:
    """The body of an NDJSON ``stats`` event."""
    return _render(s, "ndjson")


def stream(s: StatsSnapshot) -> Keys:
    """A worker's ``stats`` event on its stream and ``/v1/stats`` (before JSON sanitising)."""
    return _render(s, "stream")


_RENDERS: dict[str, list[Render]] = {
    rendering: [how for f in FIELDS.values() if not isinstance(how := getattr(f, rendering), str)]
    for rendering in ("ndjson", "stream")
}
"""Each JSON rendering's field functions, in :data:`FIELDS` order (picked once: a tick renders a snapshot)."""


def _render(s: StatsSnapshot, rendering: str) -> Keys:
    out: Keys = {}
    for how in _RENDERS[rendering]:
        out.update(how(s))
    return out


def prometheus_families() -> list[str]:
    """Every metric family the table says carries a snapshot field (counters without ``_total``)."""
    return [name for f in FIELDS.values() if not isinstance(f.prometheus, str) for name in f.prometheus]
