"""Reporters for scripts and CI: NDJSON events against the schema, status lines, choosing, exit 5."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kstap.cli import outputs
from kstap.cli.outputs import (
    JsonReporter,
    LineReporter,
    RunInfo,
    SmokeCheckFailed,
    Tee,
    choose_reporter,
    smoke_check,
    status_line,
)
from kstap.config import OutputSettings, TapSettings
from kstap.contracts import AlertLevel, AlertRaised, parse_event
from kstap.dashboard import samples
from kstap.errors import ExitCode, KstapError, UsageError
from kstap.model import CaptureSummary, Interface, SourceStats, StatsSnapshot, WorkerStats
from kstap.pipeline import StopFlag, run_tap

DOCS = Path(__file__).resolve().parents[3] / "docs" / "cli.md"
T0 = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(outputs.SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _events(buf: io.StringIO, validator: Any) -> list[dict[str, Any]]:
    events = []
    for line in buf.getvalue().splitlines():
        event = json.loads(line)
        validator.validate(event)
        events.append(event)
    return events


class TtyStringIO(io.StringIO):
    def isatty(self) -> bool:
        return True


def from_wire(reporter: Any, kind: str, data: dict[str, object]) -> None:
    """An event as a worker's stream carries it, through the one parser, to the reporter."""
    event = parse_event(kind, data)
    if event is not None:
        reporter.event(event)


def test_every_event_kind_validates(validator: Any) -> None:
    buf = io.StringIO()
    clock = iter(range(1_764_000_000, 1_764_000_100))
    r = JsonReporter(buf, run=RunInfo(mode="auto", profile="prod", filter="tcp", targets=["veth0"], output="x"),
                     clock=lambda: float(next(clock)))
    r.listening([Interface("veth0"), Interface("veth1", linktype=113, snaplen=96)], "af_packet", 2)
    for make in samples.ALL.values():
        r.progress(make())
    r.progress(StatsSnapshot(rate=float("nan"), resources=None, controller=None))
    from_wire(r, "rate_change", {"old": 1.0, "new": 0.5, "reason": "emergency", "pressure": 0.93, "worker": 1})
    from_wire(r, "rate_change", {"old": 0.5, "new": 0.6, "reason": None, "junk": object()})
    from_wire(r, "alert", {"level": "critical", "kind": "oom", "message": "an OOM kill in the cgroup"})
    from_wire(r, "alert", {"level": "bogus", "kind": "x", "message": "normalised to warn"})
    from_wire(r, "unknown-kind", {"ignored": True})
    r.warning("interface went down")
    summary = CaptureSummary(captured=10, received=12, dropped=2, files=["x"], per_worker={0: 6, 1: 4},
                             per_interface={"veth0": SourceStats(12, 2, 10)}, stopped_by="signal")
    r.summary(summary, error=smoke_check(summary, max_drop=0.1))
    events = _events(buf, validator)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "summary"
    assert set(kinds) == set(outputs.EVENTS)
    assert all(e["schema"] == 1 for e in events)
    assert events[-1]["exit_code"] == 5 and "above --max-drop" in events[-1]["error"]
    assert [e["level"] for e in events if e["event"] == "alert"] == ["critical", "warn", "warn"]
    assert next(e for e in events if e["event"] == "stats" and e["rate"] is None)


def test_a_real_replay_writes_valid_ndjson(tmp_path: Path, frames: Any, pcap: Any, validator: Any) -> None:
    src = pcap(tmp_path / "in.pcap", [(T0 + i * 1_000_000, f) for i, f in enumerate(frames.mixed(40))])
    settings = TapSettings(read=str(src), output=OutputSettings(path=str(tmp_path / "out.pcapng")))
    buf = io.StringIO()
    reporter = JsonReporter(buf, run=RunInfo.from_settings(settings))
    summary = run_tap(settings, reporter)
    reporter.progress(StatsSnapshot(elapsed=0.5, captured=summary.captured))  # a replay may end within a tick
    reporter.summary(summary)
    events = _events(buf, validator)
    assert events[0]["event"] == "start" and events[-1]["event"] == "summary"
    assert events[0]["targets"] == [str(src)] and events[0]["backend"] == "file"
    assert events[-1]["captured"] == 40 and events[-1]["exit_code"] == 0


def test_docs_examples_validate(validator: Any) -> None:
    lines = [line for line in DOCS.read_text(encoding="utf-8").splitlines() if line.startswith('{"schema":')]
    kinds = {json.loads(line)["event"] for line in lines}
    assert kinds == set(outputs.EVENTS), "docs/cli.md should show one example of each event"
    for line in lines:
        validator.validate(json.loads(line))


def test_broken_pipe_stops_the_capture() -> None:
    class Gone(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError

    stop = StopFlag()
    r = JsonReporter(Gone(), stop=stop)
    r.progress(StatsSnapshot())
    r.progress(StatsSnapshot())
    assert stop and r.closed


def test_status_lines() -> None:
    line = status_line(samples.auto_falling())
    assert line.startswith("kstap: 90s  9,870 pkt/s  2,104,882 captured  5,138 dropped (0.24%)")
    assert "rate 12.0%" in line and "mem 72.3%" in line
    assert "rate" not in status_line(samples.steady_full())
    assert "1 worker lost" in status_line(samples.lost_worker())


def test_line_reporter_prints_once_per_interval() -> None:
    err = io.StringIO()
    r = LineReporter(err, interval=5.0)
    for t in range(12):
        r.progress(StatsSnapshot(elapsed=float(t), captured=t))
    from_wire(r, "rate_change", {"old": 1.0, "new": 0.25, "reason": "pi"})
    from_wire(r, "alert", {"level": "warn", "kind": "memory", "message": "memory at 71%"})
    r.summary(CaptureSummary(captured=3, received=3))
    lines = err.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines[:3]] == ["0s", "5s", "10s"]
    assert "kstap: sampling rate 100% -> 25.0% (pi)" in lines
    assert "kstap: warn: memory: memory at 71%" in lines
    assert lines[-3:] == ["3 packets captured", "3 packets received by filter", "0 packets dropped by kernel"]
    quiet = io.StringIO()
    LineReporter(quiet, progress=False).progress(StatsSnapshot(elapsed=3.0))
    assert quiet.getvalue() == ""


def test_choose_reporter() -> None:
    pipe, tty, err = io.StringIO(), TtyStringIO(), io.StringIO()
    assert isinstance(choose_reporter(json_output=True, stdout=pipe, stderr=err), JsonReporter)
    lines = choose_reporter(output_path="x.pcapng", stdout=pipe, stderr=err)
    assert isinstance(lines, LineReporter) and lines.show_progress and lines.packet_lines
    on_tty = choose_reporter(output_path=None, stdout=tty, stderr=err)
    assert isinstance(on_tty, LineReporter) and not on_tty.show_progress
    assert isinstance(choose_reporter(output_path=None, stdout=tty, stderr=err, progress=True), LineReporter)
    assert not choose_reporter(stdout=pipe, stderr=err, quiet=True).show_progress  # type: ignore[attr-defined]
    dash = choose_reporter(output_path="x.pcapng", stdout=tty, stderr=err, stdin=io.StringIO(),
                           run=RunInfo(mode="auto"))
    assert type(dash).__name__ == "DashboardReporter" and not dash.packet_lines
    assert isinstance(choose_reporter(output_path="-", stdout=tty, stderr=err), LineReporter)
    assert isinstance(choose_reporter(output_path="x", stdout=tty, stderr=err, dashboard=False), LineReporter)


@pytest.mark.parametrize(("kw", "message"), [
    ({"json_output": True, "output_path": "-"}, "--json and -w - both need standard output"),
    ({"dashboard": True}, "--dashboard needs a terminal"),
    ({"dashboard": True, "json_output": True}, "cannot share standard output with --json"),
    ({"warn": 0.95, "critical": 0.9}, "memory thresholds"),
    ({"metrics_port": 70000}, "--metrics-port"),
])
def test_choose_reporter_usage_errors(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)) as info:
        choose_reporter(stdout=io.StringIO(), stderr=io.StringIO(), **kw)
    assert info.value.code == ExitCode.USAGE and info.value.hint


def test_choose_reporter_with_metrics_tees_and_closes() -> None:
    err = io.StringIO()
    r = choose_reporter(json_output=True, metrics_port=0, stdout=io.StringIO(), stderr=err)
    assert isinstance(r, Tee) and not r.packet_lines
    with r:
        r.progress(samples.steady_full())
        r.summary(CaptureSummary())
    assert "Prometheus metrics on http://127.0.0.1:" in err.getvalue()
    metrics = r.others[0]
    assert metrics._server is None  # closed


def test_metrics_port_in_use_is_a_usage_error() -> None:
    from kstap.metrics import MetricsServer

    with MetricsServer(0) as taken, pytest.raises(UsageError, match="cannot listen"):
        choose_reporter(metrics_port=taken.port, stdout=io.StringIO(), stderr=io.StringIO())


def test_smoke_check() -> None:
    ok = CaptureSummary(captured=100, received=100, dropped=0)
    assert smoke_check(ok, max_drop=0.0, expect_packets=100) is None
    assert smoke_check(ok) is None
    drops = CaptureSummary(captured=95, received=100, dropped=5)
    failure = smoke_check(drops, max_drop=0.01)
    assert isinstance(failure, SmokeCheckFailed) and isinstance(failure, KstapError)
    assert failure.code == ExitCode.DROPS == 5 and failure.summary is drops
    assert failure.message == "drop ratio 5.0% (5 of 100 packets) is above --max-drop 0.01"
    assert smoke_check(drops, max_drop=0.05) is None  # equal is not above
    few = smoke_check(CaptureSummary(captured=1), expect_packets=10)
    assert few is not None and few.message == "captured 1 packet, fewer than --expect-packets 10" and few.hint
    both = smoke_check(drops, max_drop=0.0, expect_packets=1000)
    assert both is not None and "--max-drop" in both.message and "--expect-packets" in both.message
    assert smoke_check(CaptureSummary(), max_drop=0.0) is None  # nothing received: no drops
    outputs.check_smoke_args(0.5, 3)
    with pytest.raises(UsageError):
        outputs.check_smoke_args(1.5, None)
    with pytest.raises(UsageError):
        outputs.check_smoke_args(None, -1)


def test_run_info_from_settings() -> None:
    settings = TapSettings(interfaces=["veth0"], bpf_filter="udp", output=OutputSettings(path="a.pcapng"))
    settings.sampling.mode = "auto"
    info = RunInfo.from_settings(settings)
    assert (info.mode, info.filter, info.targets, info.output) == ("auto", "udp", ["veth0"], "a.pcapng")
    assert info.snapshot().mode == "auto"


def test_tee_forwards_everything() -> None:
    class Recorder:
        packet_lines = False

        def __init__(self) -> None:
            self.calls: list[str] = []

        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: self.calls.append(name)

    a, b = Recorder(), Recorder()
    tee = Tee(a, b)  # type: ignore[arg-type]
    tee.listening([], "file", 1)
    tee.progress(StatsSnapshot(workers=[WorkerStats(0)]))
    tee.event(AlertRaised(AlertLevel.WARN, "alert", ""))
    tee.warning("w")
    tee.summary(CaptureSummary())
    tee.close()
    assert a.calls == b.calls == ["listening", "progress", "event", "warning", "summary", "close"]


def test_dashboard_reporter_through_a_real_replay(tmp_path: Path, frames: Any, pcap: Any) -> None:
    src = pcap(tmp_path / "in.pcap", [(T0 + i * 1_000_000, f) for i, f in enumerate(frames.mixed(20))])
    settings = TapSettings(read=str(src), output=OutputSettings(path=str(tmp_path / "out.pcapng")))
    out, err = TtyStringIO(), io.StringIO()
    stop = StopFlag()
    reporter = choose_reporter(stop=stop, output_path=settings.output.path, stdout=out, stderr=err,
                               stdin=io.StringIO(), run=RunInfo.from_settings(settings))
    with reporter:
        summary = run_tap(settings, reporter, stop, lines=sys.stdout if reporter.packet_lines else None)
        reporter.progress(StatsSnapshot(elapsed=1.0, captured=summary.captured, targets=[str(src)]))
        reporter.summary(summary)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # cursor moves and colours
    assert "kstap · full mode" in screen and "q stop" in screen
    assert reporter.frames >= 1 and reporter.snapshot.captured == 20  # type: ignore[attr-defined]
    assert err.getvalue().splitlines()[-3:] == ["20 packets captured", "20 packets received by filter",
                                                "0 packets dropped by kernel"]
