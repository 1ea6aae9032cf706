"""Prometheus metrics of a running capture (``--metrics-port``), served by prometheus-client.

:class:`MetricsServer` is a :class:`kstap.pipeline.Reporter`: every snapshot updates what the next
scrape sees. Counters are kept monotonic here (a worker that restarts and counts from zero again
does not make a ``_total`` go down): each counter adds the positive differences of what it is fed,
and a value lower than the last one is taken as a reset, as Prometheus's ``rate()`` would.
The registry is private to the server (no process or platform collectors, no global state).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from kstap import __version__
from kstap.contracts import AlertRaised, Event
from kstap.model import CaptureSummary, Interface, StatsSnapshot, WorkerStats


@dataclass
class MonotonicCounter:
    """A running total fed with a source counter that may restart from zero."""

    total: float = 0.0
    last: float = 0.0

    def feed(self, value: float) -> float:
        self.total += value - self.last if value >= self.last else value
        self.last = value
        return self.total


COUNTERS: dict[str, str] = {
    "kstap_packets_received": "Packets the kernel capture filter accepted (tcpdump's 'received by filter').",
    "kstap_packets_dropped": "Packets the kernel dropped because the capture ring was full.",
    "kstap_packets_duplicates": "Copies of packets already seen on another interface of the node, removed "
                                "(-i any dedup; not written, not dissected).",
    "kstap_packets_sampled_out": "Packets of flows the sampler did not keep (not written, not dissected).",
    "kstap_packets_left_out": "Packets on the captured interfaces the kernel filter did not pass (BPF expression "
                              "and sampling threshold; from the interface counters).",
    "kstap_packets_captured": "Packets written to the output (or counted, without an output file).",
    "kstap_bytes_captured": "Bytes of captured packets (as captured, after the snapshot length).",
    "kstap_cpu_throttled_periods": "CFS periods in which the capture's cgroup was throttled.",
    "kstap_oom_events": "Out-of-memory events of the capture's cgroup.",
}
"""Counter name (without _total) → help text."""


@dataclass
class _State:
    counters: dict[str, MonotonicCounter] = field(default_factory=lambda: {n: MonotonicCounter() for n in COUNTERS})
    alerts: dict[tuple[str, str], int] = field(default_factory=dict)
    snapshot: StatsSnapshot | None = None


class _Collector(Collector):
    """Builds the metric families from the latest state at each scrape."""

    def __init__(self, state: _State, lock: threading.Lock) -> None:
        self.state = state
        self.lock = lock

    def describe(self) -> list[Metric]:
        return []  # registered without a first collect(); every scrape calls collect()

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            totals = {name: c.total for name, c in self.state.counters.items()}
            alerts = dict(self.state.alerts)
            s = self.state.snapshot
        for name, text in COUNTERS.items():
            yield CounterMetricFamily(name, text, value=totals[name])
        by_kind = CounterMetricFamily("kstap_alerts", "Alerts raised, by level and kind.", labels=["level", "kind"])
        for (level, kind), n in sorted(alerts.items()):
            by_kind.add_metric([level, kind], n)
        yield by_kind
        yield InfoMetricFamily("kstap_build", "kstap's version.", value={"version": __version__})
        if s is not None:
            yield from _gauges(s)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _gauges(s: StatsSnapshot) -> Iterator[Metric]:
    yield _gauge("kstap_sampling_rate", "Share of flows kept by the sampler (1 = every flow).", s.rate)
    pressure = _pressure(s)
    if pressure is not None:
        yield _gauge("kstap_pressure", "Resource pressure the controller sees: the larger of memory working set / "
                     "limit and CPU use / limit (1 = at the limit).", pressure)
    r = s.resources
    if r is not None:
        yield _gauge("kstap_memory_working_set_bytes", "Memory working set of the capture (cgroup usage less "
                     "inactive file cache, or the process RSS).", r.memory_bytes)
        if r.memory_limit:
            yield _gauge("kstap_memory_limit_bytes", "Memory limit the capture runs under (the smallest up the "
                         "cgroup tree, or --memory-budget).", r.memory_limit)
        yield _gauge("kstap_cpu_cores", "CPU the capture uses, in cores.", r.cpu_cores)
        if r.cpu_limit:
            yield _gauge("kstap_cpu_limit_cores", "CPU quota of the capture, in cores.", r.cpu_limit)
    yield _gauge("kstap_flows_tracked", "Flows in the sampler's flow table.", s.flows_tracked)
    yield _gauge("kstap_dissect_memory_bytes", "Memory held by protocol dissection (reassembly buffers).",
                 s.dissect_memory)
    yield _gauge("kstap_packets_per_second", "Captured packets per second over the last 5 seconds.",
                 s.packets_per_second)
    workers = GaugeMetricFamily("kstap_workers", "Capture workers by state.", labels=["state"])
    workers.add_metric(["up"], sum(w.alive for w in s.workers))
    workers.add_metric(["lost"], sum(not w.alive for w in s.workers))
    yield workers
    yield from _per_worker(s)


PER_WORKER: dict[str, tuple[str, Callable[[WorkerStats], float]]] = {
    "kstap_worker_up": ("1 while the worker (a local process or a node's pod) is alive.", lambda w: float(w.alive)),
    "kstap_worker_sampling_rate": ("The worker's sampling rate.", lambda w: w.rate),
    "kstap_worker_captured_packets": ("Packets the worker captured this run (restarts count again from 0).",
                                      lambda w: w.captured),
    "kstap_worker_received_packets": ("Packets the worker's kernel filter accepted this run.", lambda w: w.received),
    "kstap_worker_dropped_packets": ("Packets the worker's kernel ring dropped this run.", lambda w: w.dropped),
    "kstap_worker_restarts": ("Times the worker was restarted.", lambda w: w.restarts),
}
"""Per-worker gauges, labelled ``worker`` and ``node`` (a node's row in examples/grafana-dashboard.json)."""


def _per_worker(s: StatsSnapshot) -> Iterator[Metric]:
    for name, (text, value) in PER_WORKER.items():
        family = GaugeMetricFamily(name, text, labels=["worker", "node"])
        for w in s.workers:
            family.add_metric([str(w.worker), w.node or "local"], float(value(w)))
        yield family


def _pressure(s: StatsSnapshot) -> float | None:
    if s.controller is not None:
        return s.controller.pressure
    r = s.resources
    if r is None:
        return None
    parts = []
    if r.memory_limit:
        parts.append(r.memory_bytes / r.memory_limit)
    if r.cpu_limit:
        parts.append(r.cpu_cores / r.cpu_limit)
    return max(parts) if parts else None


class MetricsServer:
    """Serves ``/metrics`` on ``host:port`` (port 0: any free port, see :attr:`port`).

    Implements :class:`kstap.pipeline.Reporter`; :meth:`update` may also be called directly.
    """

    packet_lines = True
    """Metrics do not use stdout (in a Tee, the primary reporter decides)."""

    def __init__(self, port: int, *, host: str = "127.0.0.1") -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0 .. 65535")
        self.requested_port = port
        self.host = host
        self.registry = CollectorRegistry(auto_describe=False)
        self._state = _State()
        self._lock = threading.Lock()
        self.registry.register(_Collector(self._state, self._lock))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually listened on (after :meth:`start`)."""
        return int(self._server.server_address[1]) if self._server is not None else self.requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        """Listen (raises OSError if the port is taken); idempotent."""
        if self._server is None:
            self._server, self._thread = start_http_server(self.requested_port, addr=self.host,
                                                           registry=self.registry)
        return self

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- feeding ---------------------------------------------------------------------------------------------
    def update(self, s: StatsSnapshot) -> None:
        """What the next scrape reports: this snapshot's gauges, and counters advanced to its totals."""
        r = s.resources
        feed = {
            "kstap_packets_received": s.received,
            "kstap_packets_dropped": s.dropped,
            "kstap_packets_duplicates": s.duplicates,
            "kstap_packets_sampled_out": s.sampled_out,
            "kstap_packets_left_out": s.left_out,
            "kstap_packets_captured": s.captured,
            "kstap_bytes_captured": s.bytes_captured,
            "kstap_cpu_throttled_periods": r.throttled_periods if r is not None else None,
            "kstap_oom_events": r.oom_events if r is not None else None,
        }
        with self._lock:
            for name, value in feed.items():
                if value is not None:
                    self._state.counters[name].feed(value)
            self._state.snapshot = s

    def count_alert(self, level: str, kind: str) -> None:
        with self._lock:
            key = (level, kind)
            self._state.alerts[key] = self._state.alerts.get(key, 0) + 1

    def listening(self, interfaces: list[Interface], backend: str, workers: int) -> None:
        pass

    def progress(self, snapshot: StatsSnapshot) -> None:
        self.update(snapshot)

    def event(self, event: Event) -> None:
        if isinstance(event, AlertRaised):
            self.count_alert(event.level.value, event.kind)

    def warning(self, message: str) -> None:
        self.count_alert("warn", "warning")

    def summary(self, summary: CaptureSummary, *, error: object | None = None) -> None:
        """The final totals (a last scrape before exit sees them)."""
        with self._lock:
            c = self._state.counters
            for name, value in (("kstap_packets_received", summary.received),
                                ("kstap_packets_dropped", summary.dropped),
                                ("kstap_packets_sampled_out", summary.sampled_out),
                                ("kstap_packets_captured", summary.captured),
                                ("kstap_bytes_captured", summary.bytes_captured)):
                if value >= c[name].last:  # the summary is the same source: never a reset
                    c[name].feed(value)
