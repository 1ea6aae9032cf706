"""How a capture reports while it runs: the live dashboard, a line per interval, or NDJSON events.

:func:`choose_reporter` picks one from the flags and whether stdout is a terminal:

- ``--json``: :class:`JsonReporter` writes NDJSON events on stdout (schema: ``ndjson.schema.json``
  beside this file). ``--json`` with ``-w -`` is a usage error: both would need stdout.
- stdout is a terminal and packets go to a file: the live dashboard (rich), ``q`` stops.
- otherwise: :class:`LineReporter`, a short status line per interval on stderr.

``--metrics-port`` adds a :class:`kstap.metrics.MetricsServer` next to whichever was chosen.
:func:`smoke_check` turns ``--max-drop`` / ``--expect-packets`` into exit code 5.

Every reporter here implements :class:`kstap.pipeline.Reporter` plus ``summary(summary, error=None)``
(the closing report), ``close()`` (idempotent, also via ``with``) and ``packet_lines`` (whether the
pipeline may print one line per packet on stdout, tcpdump style, when there is no ``-w``).
rich is imported only when the dashboard is chosen.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TextIO

from kstap import __version__
from kstap.cli.report import TextReporter
from kstap.contracts import AlertRaised, Event, RateChanged
from kstap.errors import ExitCode, KstapError, UsageError
from kstap.formats import snapshot as snapshot_format
from kstap.model import CaptureSummary, Interface, StatsSnapshot

if TYPE_CHECKING:
    from kstap.pipeline import StopFlag

SCHEMA_VERSION = 1
_LINE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
"""An NDJSON line's encoder, made once: ``json.dumps`` with any argument builds a new one per call,
and a capture writes a stats line every second."""
"""Bumped only for incompatible changes; new optional fields keep it."""
SCHEMA_PATH = Path(__file__).with_name("ndjson.schema.json")
EVENTS = ("start", "stats", "rate_change", "alert", "summary")


class CliReporter(Protocol):
    """What ``kstap tap`` drives: the pipeline's Reporter plus the CLI's closing calls."""

    packet_lines: bool

    def listening(self, interfaces: list[Interface], backend: str, workers: int) -> None: ...
    def progress(self, snapshot: StatsSnapshot) -> None: ...
    def event(self, event: Event) -> None: ...
    def warning(self, message: str) -> None: ...
    def summary(self, summary: CaptureSummary, *, error: KstapError | None = None) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> CliReporter: ...
    def __exit__(self, *exc: object) -> None: ...


@dataclass
class RunInfo:
    """What the run is, for the ``start`` event and the dashboard's header before the first tick."""

    mode: str = "full"
    profile: str | None = None
    filter: str = ""
    targets: list[str] = field(default_factory=list)
    output: str | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> RunInfo:
        """From a :class:`kstap.config.TapSettings` (duck-typed: fields it lacks keep their defaults)."""
        sampling = getattr(settings, "sampling", None)
        output = getattr(settings, "output", None)
        read = getattr(settings, "read", None)
        return cls(mode=getattr(sampling, "mode", "full"), profile=getattr(settings, "profile", None),
                   filter=getattr(settings, "bpf_filter", ""),
                   targets=list(getattr(settings, "interfaces", []) or ([read] if read else [])),
                   output=getattr(output, "path", None))

    def snapshot(self) -> StatsSnapshot:
        return StatsSnapshot(mode=self.mode, profile=self.profile, filter=self.filter, targets=list(self.targets),
                             output=self.output)


# -- plain data → JSON-ready dicts (pure) -------------------------------------------------------------------
_num = snapshot_format.finite


def _ratio(dropped: int, received: int) -> float:
    return dropped / received if received else 0.0


def snapshot_fields(s: StatsSnapshot) -> dict[str, object]:
    """The body of a ``stats`` event (:func:`kstap.formats.snapshot.ndjson`: histories and alerts are
    left out, they have their own events)."""
    return snapshot_format.ndjson(s)


def summary_fields(s: CaptureSummary, error: KstapError | None = None) -> dict[str, object]:
    """The body of a ``summary`` event; ``exit_code`` is what kstap exits with."""
    return {
        "captured": s.captured,
        "bytes_captured": s.bytes_captured,
        "received": s.received,
        "dropped": s.dropped,
        "drop_ratio": round(_ratio(s.dropped, s.received), 6),
        "duplicates": s.duplicates,
        "interface_changes": list(s.interface_changes),
        "sampled_out": s.sampled_out,
        "left_out": s.left_out,
        "flows_estimated": _num(round(s.flows_estimated, 1)) if s.flows_estimated is not None else None,
        "flows_seen": s.flows_seen,
        "flows_kept": s.flows_kept,
        "shed_flows": s.shed_flows,
        "final_rate": _num(s.final_rate),
        "stopped_by": s.stopped_by,
        "files": list(s.files),
        "per_worker": {str(w): n for w, n in sorted(s.per_worker.items())},
        "per_interface": {name: {"received": st.received, "dropped": st.dropped, "delivered": st.delivered}
                          for name, st in s.per_interface.items()},
        "warnings": list(s.warnings),
        "exit_code": int(error.code) if error is not None else int(ExitCode.OK),
        "error": error.message if error is not None else None,
    }


# -- NDJSON ----------------------------------------------------------------------------------------------
class JsonReporter:
    """NDJSON on ``stream`` (stdout): one object per line, each with ``schema``, ``event`` and ``time``.

    ``time`` is the Unix time of the event in seconds. If the reader goes away (EPIPE), output stops
    and ``stop`` (if given) is set, so the capture ends and closes its files.
    """

    packet_lines = False

    def __init__(self, stream: IO[str], *, run: RunInfo | None = None, stop: StopFlag | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.stream = stream
        self.run = run or RunInfo()
        self.stop = stop
        self.clock = clock
        self.closed = False

    def emit(self, event: str, body: Mapping[str, object]) -> None:
        if self.closed:
            return
        line = _LINE.encode({"schema": SCHEMA_VERSION, "event": event, "time": round(self.clock(), 3), **body})
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except BrokenPipeError:
            self.closed = True
            if self.stop is not None:
                self.stop.set()

    def listening(self, interfaces: list[Interface], backend: str, workers: int) -> None:
        self.emit("start", {
            "version": __version__, "mode": self.run.mode, "profile": self.run.profile, "filter": self.run.filter,
            "targets": list(self.run.targets), "output": self.run.output, "backend": backend, "workers": workers,
            "interfaces": [{"name": i.name, "linktype": i.linktype, "snaplen": i.snaplen} for i in interfaces],
        })

    def progress(self, snapshot: StatsSnapshot) -> None:
        self.emit("stats", snapshot_fields(snapshot))

    def event(self, event: Event) -> None:
        if isinstance(event, RateChanged):
            body: dict[str, object] = {"old": _as_float(event.old), "new": _as_float(event.new),
                                       "reason": event.reason, "pressure": _as_float(event.pressure)}
            if event.worker is not None:
                body["worker"] = event.worker
            self.emit("rate_change", body)
        else:
            self.emit("alert", event.wire())

    def warning(self, message: str) -> None:
        self.emit("alert", {"level": "warn", "kind": "warning", "message": message})

    def summary(self, summary: CaptureSummary, *, error: KstapError | None = None) -> None:
        self.emit("summary", summary_fields(summary, error))

    def close(self) -> None:
        pass

    def __enter__(self) -> JsonReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_float(v: object) -> float | None:
    return _num(float(v)) if isinstance(v, int | float) else None


# -- a line per interval ------------------------------------------------------------------------------------
def status_line(s: StatsSnapshot) -> str:
    """``kstap: 12s  9,870 pkt/s  2,104,882 captured  5,138 dropped (0.24%)  rate 12.0%  mem 72%``."""
    parts = [f"kstap: {s.elapsed:.0f}s", f"{s.packets_per_second:,.0f} pkt/s", f"{s.captured:,} captured",
             f"{s.dropped:,} dropped ({_pct(s.drop_ratio)})"]
    if s.mode != "full":
        parts.append(f"rate {_pct(s.rate)}")
    r = s.resources
    if r is not None and r.memory_limit:
        parts.append(f"mem {_pct(r.memory_bytes / r.memory_limit)}")
    lost = sum(not w.alive for w in s.workers)
    if lost:
        parts.append(f"{lost} worker{'s' if lost > 1 else ''} lost")
    return "  ".join(parts)


def _pct(x: float) -> str:
    p = x * 100
    return "0%" if p == 0 else (f"{p:.0f}%" if p >= 99.95 else f"{p:.1f}%" if p >= 1 else f"{p:.2f}%")


class LineReporter(TextReporter):
    """tcpdump-style text on stderr, plus a status line every ``interval`` seconds of capture.

    Alerts and rate changes get a line each as they happen. With ``progress=False`` only those,
    warnings and the closing summary are printed.
    """

    packet_lines = True

    def __init__(self, stream: TextIO | None = None, *, interval: float = 1.0, progress: bool = True) -> None:
        super().__init__(stream, progress=progress)
        self.interval = interval
        self._next = 0.0

    def progress(self, snapshot: StatsSnapshot) -> None:
        if self.show_progress and snapshot.elapsed + 1e-9 >= self._next:
            self._say(status_line(snapshot))
            self._next = snapshot.elapsed + self.interval

    def event(self, event: Event) -> None:
        if isinstance(event, AlertRaised):
            self._say(f"kstap: {event.level}: {event.kind}: {event.message}")
        else:
            self._say(f"kstap: sampling rate {_pct(event.old)} -> {_pct(event.new)} ({event.reason or 'set'})")

    def summary(self, summary: CaptureSummary, *, error: KstapError | None = None) -> None:
        super().summary(summary)

    def close(self) -> None:
        pass

    def __enter__(self) -> LineReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- several at once --------------------------------------------------------------------------------------
class Tee:
    """Hands every call to ``primary`` and then to ``others`` (e.g. the metrics server)."""

    def __init__(self, primary: CliReporter, *others: Any) -> None:
        self.primary = primary
        self.others = others
        self.packet_lines = primary.packet_lines

    def _all(self) -> list[Any]:
        return [self.primary, *self.others]

    def listening(self, interfaces: list[Interface], backend: str, workers: int) -> None:
        for r in self._all():
            r.listening(interfaces, backend, workers)

    def progress(self, snapshot: StatsSnapshot) -> None:
        for r in self._all():
            r.progress(snapshot)

    def event(self, event: Event) -> None:
        for r in self._all():
            r.event(event)

    def warning(self, message: str) -> None:
        for r in self._all():
            r.warning(message)

    def summary(self, summary: CaptureSummary, *, error: KstapError | None = None) -> None:
        for r in self._all():
            if hasattr(r, "summary"):
                r.summary(summary, error=error)

    def close(self) -> None:
        for r in self._all():
            r.close()

    def __enter__(self) -> Tee:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- CI smoke checks (exit 5) -------------------------------------------------------------------------------
class SmokeCheckFailed(KstapError):
    """The capture ran, but ``--max-drop`` or ``--expect-packets`` says it is not good enough (exit 5)."""

    code = ExitCode.DROPS


def check_smoke_args(max_drop: float | None, expect_packets: int | None) -> None:
    """Usage errors for the smoke-check flags (call before capturing)."""
    if max_drop is not None and not 0.0 <= max_drop <= 1.0:
        raise UsageError(f"--max-drop must be a ratio between 0 and 1, got {max_drop}",
                         hint="e.g. --max-drop 0.01 fails the run when more than 1% of packets were dropped")
    if expect_packets is not None and expect_packets < 0:
        raise UsageError("--expect-packets cannot be negative", hint="e.g. --expect-packets 100")


def smoke_check(summary: CaptureSummary, *, max_drop: float | None = None,
                expect_packets: int | None = None) -> SmokeCheckFailed | None:
    """The failure to raise (exit 5) when the finished capture misses a threshold, else None.

    The drop ratio is kernel drops / packets the kernel accepted (``received``, which counts the
    dropped ones too, as tcpdump's numbers do).
    """
    problems, hints = [], []
    ratio = _ratio(summary.dropped, summary.received)
    if max_drop is not None and ratio > max_drop:
        problems.append(f"drop ratio {_pct(ratio)} ({summary.dropped} of {summary.received} packets) "
                        f"is above --max-drop {max_drop:g}")
        hints.append("a bigger --buffer-size, more --workers or a narrower filter lowers kernel drops")
    if expect_packets is not None and summary.captured < expect_packets:
        problems.append(f"captured {summary.captured} packet{'s' if summary.captured != 1 else ''}, "
                        f"fewer than --expect-packets {expect_packets}")
        hints.append("check the filter and the targets, and that traffic flows during --duration")
    if not problems:
        return None
    failure = SmokeCheckFailed("; ".join(problems), hint="; ".join(hints))
    failure.summary = summary
    return failure


# -- output paths, checked before anything is opened ---------------------------------------------------------
PCAP_SUFFIXES = (".pcap", ".cap", ".dmp")
"""Names that promise classic pcap (libpcap's savefile format), which kstap does not write."""


def check_output_paths(settings: Any) -> None:
    """Usage errors (exit 2) for outputs that cannot work, before capture starts.

    - an output that would overwrite the ``--read`` file (also through -C/-G ring names) or another output;
    - ``-w x.pcap``: kstap writes pcapng, and a pcapng file named .pcap misleads tools that trust the name;
    - an ``--entries`` file that cannot be created (missing folder, read-only file system, no permission).
    """
    from kstap.sinks.files import check_not_input, check_writable

    out = settings.output
    check_not_input(settings.read, {"-w": out.path, "--entries": settings.entries},
                    rotating=bool(out.rotate_mb or out.rotate_seconds))
    if out.path and out.path != "-" and Path(out.path).suffix.lower() in PCAP_SUFFIXES:
        stem = Path(out.path).with_suffix(".pcapng")
        raise UsageError(f"-w {out.path!r}: kstap writes pcapng, not classic pcap",
                         hint=f"name it {str(stem)!r} (tcpdump -r, tshark and Wireshark read pcapng); for pcap, "
                              f"convert afterwards: editcap -F pcap {stem} {out.path}")
    if settings.entries and settings.entries != "-":
        check_writable(settings.entries, "--entries")


# -- choosing -------------------------------------------------------------------------------------------------
def choose_reporter(*, stop: StopFlag | None = None, json_output: bool = False, output_path: str | None = None,
                    dashboard: bool | None = None, progress: bool = False, quiet: bool = False,
                    interval: float = 1.0, metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
                    run: RunInfo | None = None, warn: float = 0.70, critical: float = 0.90,
                    stdout: TextIO | None = None, stderr: TextIO | None = None,
                    stdin: TextIO | None = None) -> CliReporter:
    """The reporter for a capture, from its flags and the terminal (see the module docstring).

    ``dashboard``: None = automatic (stdout is a terminal and ``-w FILE`` names a file), True =
    required (a usage error without a terminal), False = never. ``progress`` forces status lines
    when packet lines go to a terminal (no ``-w``); ``quiet`` turns status lines off.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    _check_thresholds(warn, critical)
    to_stdout = output_path == "-"
    if json_output and to_stdout:
        raise UsageError("--json and -w - both need standard output",
                         hint="write the capture to a file with -w FILE, or drop --json")
    tty = _isatty(out)
    if dashboard and (json_output or to_stdout):
        raise UsageError("the dashboard cannot share standard output with "
                         + ("--json" if json_output else "-w -"), hint="drop --dashboard")
    if dashboard and not tty:
        raise UsageError("--dashboard needs a terminal on standard output", hint="drop --dashboard in scripts")
    reporter: CliReporter
    if json_output:
        reporter = JsonReporter(out, run=run, stop=stop)
    elif dashboard or (dashboard is None and tty and output_path is not None and not to_stdout):
        reporter = _dashboard(stop, out, err, stdin, run, warn, critical)
    else:
        lines_on_tty = tty and output_path is None
        reporter = LineReporter(err, interval=interval, progress=not quiet and (progress or not lines_on_tty))
    if metrics_port is None:
        return reporter
    from kstap.metrics import MetricsServer

    try:
        metrics = MetricsServer(metrics_port, host=metrics_host)
        metrics.start()
    except OSError as exc:
        raise UsageError(f"--metrics-port {metrics_port}: cannot listen on {metrics_host}: {exc.strerror or exc}",
                         hint="choose a free port, or 0 for any free port") from None
    except ValueError as exc:
        raise UsageError(f"--metrics-port: {exc}", hint="a TCP port: 1 .. 65535, or 0 for any free port") from None
    print(f"kstap: Prometheus metrics on {metrics.url}", file=err, flush=True)
    return Tee(reporter, metrics)


def _check_thresholds(warn: float, critical: float) -> None:
    if not 0.0 < warn <= critical <= 1.0:
        raise UsageError(f"memory thresholds must satisfy 0 < warn <= critical <= 1, got {warn} and {critical}",
                         hint="the defaults are 0.70 and 0.90")


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _dashboard(stop: StopFlag | None, out: TextIO, err: TextIO, stdin: TextIO | None, run: RunInfo | None,
               warn: float, critical: float) -> CliReporter:
    from kstap.dashboard.live import LiveDashboard, terminal_console

    class DashboardReporter(LiveDashboard):
        """The live dashboard, then tcpdump's closing lines on stderr."""

        def summary(self, summary: CaptureSummary, *, error: KstapError | None = None) -> None:
            self.close()
            TextReporter(err).summary(summary)

        def __enter__(self) -> DashboardReporter:
            return self

    return DashboardReporter(stop, console=terminal_console(out), stdin=stdin, warn=warn, critical=critical,
                             initial=run.snapshot() if run is not None else None)

