"""The worker: the capture pipeline on one node, published over HTTP instead of written to a file.

``kstap worker`` (and the DaemonSet pod that runs it) builds a :class:`Worker`: it binds the API
(:mod:`kstap.remote.server`), runs :func:`kstap.pipeline.assembly.run_worker` with a
:class:`~kstap.remote.hub.StreamSink` in place of the pcapng file (capture, sampling and, with
``--entries on``, dissection all happen here), and publishes packets, packet comments, interface
counters, stats snapshots, alerts and entries to every stream reader. Rate and filter changes
posted to ``/v1/control`` reach the capture loop through a :class:`~kstap.remote.hub.ControlInbox`.
When the capture ends (signal, ``--duration``, error) the END frame is published and the API
stays up for up to ``linger`` seconds so a reader can collect it.
"""

from __future__ import annotations

import copy
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

from kstap.capture.afpacket import epb_batch
from kstap.config import OutputSettings, TapSettings
from kstap.contracts import AlertRaised, Event
from kstap.errors import KstapError, UsageError
from kstap.filters.bpf import compile_filter, final_expression
from kstap.model import CaptureSummary, Interface, StatsSnapshot
from kstap.pipeline.assembly import run_worker
from kstap.pipeline.stopping import StopFlag
from kstap.remote.hub import (
    DEFAULT_BACKLOG,
    ControlInbox,
    ControlRejected,
    ControlRequest,
    CountersProvider,
    EntryLines,
    StreamHub,
    StreamSink,
    snapshot_json,
)
from kstap.remote.server import WorkerAPI
from kstap.sampling import metadata

SinkFactory = Callable[[list[Interface], str, CountersProvider], StreamSink]
"""What the pipeline calls instead of opening a pcapng file: (interfaces, SHB comment, counters)."""


@dataclass
class WorkerSettings:
    """One worker: what to capture (a :class:`TapSettings`) and how to serve it."""

    tap: TapSettings
    listen: tuple[str, int]
    """Address the API binds: the pod IP (hostNetwork: the node's) or 127.0.0.1; port 0 picks one."""
    token: str = field(repr=False)
    """The per-run bearer token (never logged, never in argv)."""
    node: str = ""
    """Name this worker reports (the Kubernetes node); its interfaces become ``NODE/IFACE``."""
    entries: bool = False
    """Dissect and publish request/response entries (costs memory; see docs/dissection.md)."""
    backlog_bytes: int = DEFAULT_BACKLOG
    linger: float = 5.0
    """Seconds the API stays up after the capture ended, waiting for a reader to take the END frame."""


def default_node_name() -> str:
    """The node's name: ``KSTAP_NODE_NAME``/``NODE_NAME`` (the downward API), else the host name."""
    return os.environ.get("KSTAP_NODE_NAME") or os.environ.get("NODE_NAME") or socket.gethostname()


def _stderr_log(message: str) -> None:
    print(f"kstap worker: {message}", file=sys.stderr, flush=True)


class Worker:
    """A bound API plus the capture it serves; :meth:`run` blocks until the capture ends."""

    def __init__(self, settings: WorkerSettings, *, log: Callable[[str], None] = _stderr_log) -> None:
        if not settings.token:
            raise UsageError("the worker needs a token", hint="pass --token-file PATH or --token-env VAR")
        self.settings = settings
        self.node = settings.node or default_node_name()
        self.log = log
        self.hub = StreamHub(self.node, backlog_bytes=settings.backlog_bytes)
        self.control = ControlInbox(self._validate)
        self.sink: StreamSink | None = None
        try:
            self.api = WorkerAPI(settings.listen, settings.token, self.hub, self.control, log=log)
        except OSError as exc:
            host, port = settings.listen
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                             hint="pick a free port and an address of this host (--listen HOST:PORT)") from None

    @property
    def address(self) -> tuple[str, int]:
        return self.api.address

    def run(self, stop: StopFlag | None = None) -> CaptureSummary:
        stop = stop if stop is not None else StopFlag()
        self.api.start()
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        self.log(f"serving http://{shown}:{port} for node {self.node}")
        tap = copy.deepcopy(self.settings.tap)
        tap.output = OutputSettings()
        tap.entries = "-" if self.settings.entries else None
        lines = EntryLines(self.hub) if self.settings.entries else None
        reporter = WorkerReporter(self)
        try:
            summary = run_worker(tap, reporter, stop, cast("TextIO | None", lines), self.open_sink, self.control)
        except KstapError as exc:
            got = exc.summary if isinstance(exc.summary, CaptureSummary) else CaptureSummary()
            self.hub.end("error", summary_json(got), error=exc.message)
            self.log(f"capture failed: {exc.message}")
            self._linger()
            self.api.close()
            raise
        except BaseException:
            self.api.close()
            raise
        self.hub.end(summary.stopped_by, summary_json(summary))
        self.log(f"capture ended ({summary.stopped_by}): {summary.captured} packets published")
        self._linger()
        self.api.close()
        return summary

    def open_sink(self, interfaces: list[Interface], comment: str,
                  counters: CountersProvider | None = None) -> StreamSink:
        """The pipeline's sink factory: what the capture writes into instead of a file."""
        note = metadata.parse(comment.split(";", 1)[0])
        smp = self.settings.tap.sampling
        self.sink = StreamSink(self.hub, interfaces, comment, counters, mode=smp.mode,
                               rate=smp.rate if smp.mode != "full" else 1.0,
                               seed_id=note.fields.get("seed", "") if note else "", batch_of_epbs=epb_batch)
        return self.sink

    def _linger(self) -> None:
        if self.settings.linger > 0:
            self.hub.wait_end_delivered(self.settings.linger)

    def _validate(self, request: ControlRequest) -> None:
        """Refuse what this worker cannot apply (HTTP 409) or cannot parse (400), before queueing."""
        tap = self.settings.tap
        mode = tap.sampling.mode
        if request.rate is not None and mode == "full":
            raise ControlRejected(409, "this worker keeps every flow (--mode full); start it with "
                                       "--mode percentage to change its rate live")
        if request.rate is not None and mode == "auto":
            raise ControlRejected(409, "in auto mode the worker's controller sets the rate")
        if request.filter is not None:
            try:
                compile_filter(final_expression(request.filter), snaplen=tap.snaplen)
            except UsageError as exc:
                raise ControlRejected(400, exc.message) from None


class WorkerReporter:
    """The pipeline's :class:`~kstap.contracts.Reporter` on a worker: everything goes to the stream."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def listening(self, interfaces: list[Interface], backend: str, workers: int) -> None:
        hub = self.worker.hub
        hub.state = "capturing"
        built = epb_batch is not None
        hub.publish_event("listening", {"interfaces": [i.name for i in interfaces], "backend": backend,
                                        "workers": workers, "c_helper": built})
        names = ", ".join(i.name for i in interfaces)
        how = "" if built else "; the C helper is not built (no compiler where kstap was installed): " \
                               "a Python step per packet"
        self.worker.log(f"capturing on {names} ({backend}{how})")

    def progress(self, snapshot: StatsSnapshot) -> None:
        sink = self.worker.sink
        if sink is not None:
            sink.loop_point()
        self.worker.hub.publish_event("stats", snapshot_json(snapshot))

    def event(self, event: Event) -> None:
        self.worker.hub.publish_event(event.KIND, event.wire())
        if isinstance(event, AlertRaised):
            self.worker.log(f"{event.level}: {event.message}")
        else:
            self.worker.log(f"rate {event.old} -> {event.new} ({event.reason})")

    def warning(self, message: str) -> None:
        self.worker.hub.publish_event("warning", {"message": message})
        self.worker.log(f"warning: {message}")


def summary_json(s: CaptureSummary) -> dict[str, Any]:
    return {"captured": s.captured, "bytes_captured": s.bytes_captured, "received": s.received,
            "dropped": s.dropped, "sampled_out": s.sampled_out, "flows_seen": s.flows_seen,
            "flows_kept": s.flows_kept, "shed_flows": s.shed_flows, "final_rate": s.final_rate,
            "entries": s.entries, "stopped_by": s.stopped_by}
