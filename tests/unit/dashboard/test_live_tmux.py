"""The live dashboard in a real terminal (tmux): it redraws, 'q' stops it, the terminal is restored.

A driver process feeds :class:`LiveDashboard` a changing snapshot (rate falling, memory rising)
until 'q' sets the stop flag, the way ``kstap tap`` will; tmux's capture-pane reads the screen.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

DRIVER = r'''
import json, sys, termios, time
sys.path.insert(0, sys.argv[1])
from kstap.dashboard.live import LiveDashboard
from kstap.model import ResourceStats, StatsSnapshot, WorkerStats
from kstap.pipeline import StopFlag

before = termios.tcgetattr(sys.stdin.fileno())
stop = StopFlag()
t = 0.0
with LiveDashboard(stop, refresh_per_second=4) as dash:
    dash.listening([], "af_packet", 2)
    while not stop and t < 60:
        t += 0.25
        rate = max(0.1, 1.0 - t / 10)
        dash.progress(StatsSnapshot(
            elapsed=t, mode="auto", rate=rate, captured=int(t * 1000), received=int(t * 1000),
            packets_per_second=1000.0, output="tmux.pcapng", targets=["veth0"],
            workers=[WorkerStats(worker=0, rate=rate), WorkerStats(worker=1, rate=rate)],
            resources=ResourceStats(memory_bytes=int(min(0.95, 0.3 + t / 10) * 2**30), memory_limit=2**30)))
        time.sleep(0.25)
after = termios.tcgetattr(sys.stdin.fileno())
with open(sys.argv[2], "w") as fh:
    json.dump({"stopped": bool(stop), "restored": before == after, "elapsed": t, "size": list(dash.console.size)}, fh)
'''


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[list[str]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    name = f"kstap-test-{os.getpid()}-{time.monotonic_ns()}"
    cmd = ["tmux", "-L", name, "-f", "/dev/null"]
    yield cmd
    subprocess.run([*cmd, "kill-server"], capture_output=True, check=False, timeout=10)
    socket = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / name
    socket.unlink(missing_ok=True)


def _screen(tmux: list[str]) -> str:
    return subprocess.run([*tmux, "capture-pane", "-p", "-t", "dash"], capture_output=True, text=True,
                          check=True, timeout=10).stdout


def _wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_dashboard_redraws_and_q_stops_it(tmux: list[str], tmp_path: Path) -> None:
    driver, result, status = tmp_path / "driver.py", tmp_path / "result.json", tmp_path / "status"
    driver.write_text(DRIVER)
    # tmux may leave COLUMNS=80 LINES=24 in the pane's environment: the size must come from the terminal
    shell = f"COLUMNS=80 LINES=24 {sys.executable} {driver} {ROOT} {result}; echo $? > {status}; sleep 30"
    subprocess.run([*tmux, "new-session", "-d", "-s", "dash", "-x", "100", "-y", "50", shell], check=True, timeout=10)
    assert _wait_for(lambda: "workers" in _screen(tmux)), _screen(tmux)  # the whole frame is up
    first = _screen(tmux)
    assert "memory" in first and "workers" in first and "q stop" in first, first
    assert _wait_for(lambda: _screen(tmux) != first, timeout=5)
    time.sleep(1.0)
    second = _screen(tmux)
    rate_line = [line for line in second.splitlines() if "sampling rate" in line]
    assert rate_line and rate_line != [line for line in first.splitlines() if "sampling rate" in line]
    mem = [line for line in second.splitlines() if "memory " in line]
    assert mem and mem != [line for line in first.splitlines() if "memory " in line]
    subprocess.run([*tmux, "send-keys", "-t", "dash", "q"], check=True, timeout=10)
    assert _wait_for(status.exists, timeout=10), _screen(tmux)
    assert status.read_text().strip() == "0"
    import json

    outcome = json.loads(result.read_text())
    assert outcome["stopped"] and outcome["restored"] and outcome["elapsed"] < 60
    assert outcome["size"] == [100, 50]
    final = _screen(tmux)
    assert "sampling rate" in final  # the last frame stays on screen
