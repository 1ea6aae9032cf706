"""The live dashboard as a Reporter: frames from snapshots, histories, 'q', the terminal restored."""

from __future__ import annotations

import io
import os
import termios
import time

import pytest
from rich.console import Console

from kstap.contracts import AlertLevel, AlertRaised
from kstap.dashboard import samples
from kstap.dashboard.live import KeyReader, LiveDashboard
from kstap.model import Interface, ResourceStats, StatsSnapshot, WorkerStats
from kstap.pipeline import StopFlag


def _console(buf: io.StringIO) -> Console:
    return Console(file=buf, force_terminal=True, width=100, color_system=None)


def _text(dash: LiveDashboard) -> str:
    console = Console(record=True, width=100, color_system=None, file=io.StringIO())
    console.print(dash.frame())
    return console.export_text()


def test_frames_follow_the_snapshots_and_build_histories() -> None:
    buf = io.StringIO()
    dash = LiveDashboard(StopFlag(), console=_console(buf), keyboard=False)
    with dash:
        dash.listening([Interface("veth0")], "af_packet", 1)
        for t in range(1, 6):
            dash.progress(StatsSnapshot(
                elapsed=float(t), mode="auto", rate=1.0 if t < 3 else 0.5, captured=100 * t, received=100 * t,
                workers=[WorkerStats(worker=0, rate=1.0 if t < 3 else 0.5), WorkerStats(worker=1, rate=0.8)],
                resources=ResourceStats(memory_bytes=t * 100, memory_limit=1000)))
        text = _text(dash)
    assert dash.snapshot.rate_history == [(float(t), 1.0 if t < 3 else 0.5) for t in range(1, 6)]
    assert [len(w.rate_history) for w in dash.snapshot.workers] == [5, 5]
    assert dash.snapshot.memory_history[-1] == (5.0, 0.5)
    assert "sampling rate 50.0% · 1 change" in text and "q stop" in text
    assert "\x1b[" in buf.getvalue()  # it drew on the (forced) terminal
    assert dash.frames >= 2


def test_snapshot_histories_win_over_accumulated_ones() -> None:
    dash = LiveDashboard(console=_console(io.StringIO()), keyboard=False)
    snap = samples.auto_falling()
    dash.progress(snap)
    assert dash.snapshot.rate_history == snap.rate_history
    assert dash.snapshot.workers[0].rate_history == snap.workers[0].rate_history


def test_alerts_from_events_and_warnings_are_shown_once() -> None:
    dash = LiveDashboard(console=_console(io.StringIO()), keyboard=False, wall=lambda: 1_700_000_000.0)
    dash.event(AlertRaised(AlertLevel.CRITICAL, "shed", "shed 12 flows"))
    dash.warning("interface veth1 went down")
    text = _text(dash)
    assert "shed: shed 12 flows" in text and "warning: interface veth1 went down" in text
    snap = samples.steady_full()
    snap.alerts = [*snap.alerts, *[a for a in dash._alerts if a.kind == "shed"]]
    dash.progress(snap)
    assert _text(dash).count("shed 12 flows") == 1


def test_q_sets_the_stop_flag_once() -> None:
    stop = StopFlag()
    dash = LiveDashboard(stop, console=_console(io.StringIO()), keyboard=False)
    with dash:
        dash.start()
        dash.on_key("x")
        assert not stop
        dash.on_key("q")
        assert stop and dash.stopping
        assert "stopping: closing files" in _text(dash)


def test_a_drawing_error_does_not_escape() -> None:
    dash = LiveDashboard(console=_console(io.StringIO()), keyboard=False)
    dash.snapshot = "not a snapshot"  # type: ignore[assignment]
    assert "could not draw" in _text(dash)


def test_key_reader_on_a_real_pty_restores_the_terminal() -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "r", closefd=False) as tty_in:
            before = termios.tcgetattr(slave)
            keys: list[str] = []
            reader = KeyReader(tty_in, keys.append)
            reader.start()
            assert reader.active
            during = termios.tcgetattr(slave)
            assert not during[3] & termios.ICANON and not during[3] & termios.ECHO  # cbreak
            assert during[3] & termios.ISIG  # Ctrl-C still signals
            os.write(master, b"q")
            deadline = time.monotonic() + 5
            while not keys and time.monotonic() < deadline:
                time.sleep(0.01)
            reader.stop()
            assert keys == ["q"]
            assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_key_reader_ignores_a_non_terminal() -> None:
    reader = KeyReader(io.StringIO(), lambda k: None)
    reader.start()
    assert not reader.active
    reader.stop()


@pytest.mark.parametrize("keyboard", [True, False])
def test_close_is_idempotent(keyboard: bool) -> None:
    dash = LiveDashboard(console=_console(io.StringIO()), stdin=io.StringIO(), keyboard=keyboard)
    dash.start()
    dash.close()
    dash.close()
