"""Outputs of a real capture (issue 5): the dashboard in a real terminal, pipes, NDJSON, metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "kstap" / "cli" / "ndjson.schema.json"


def _pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                          timeout=10).stdout


def _wait_for(session: str, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _pane(session)
        if needle in screen:
            return screen
        time.sleep(0.3)
    raise AssertionError(f"{needle!r} never appeared on screen:\n{screen}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_demo_dashboard_in_a_real_terminal(tmp_path: Path) -> None:
    """kstap demo under tmux: the rate curve and the memory bar move; 'q' ends it with exit 0."""
    session = f"kstap-test-{os.getpid()}"
    out = tmp_path / "demo.pcapng"
    status = tmp_path / "status"
    cmd = (f"cd {tmp_path} && {sys.executable} -m kstap demo --duration 60 -w {out} --udp-pps 2000; "
           f"echo $? > {status}")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "110", "-y", "48", cmd], check=True, timeout=10)
    try:
        first = _wait_for(session, "MiB /", 30)  # the memory water level, after the first tick
        time.sleep(4)
        second = _pane(session)
        for screen in (first, second):
            assert "memory" in screen and "MiB /" in screen and "sampling rate" in screen
            assert "auto mode" in screen
        # the dashboard redraws: the elapsed time, the rate curve and the memory figures change
        assert first != second
        elapsed = [re.search(r"elapsed (\S+)", s).group(1) for s in (first, second)]  # type: ignore[union-attr]
        assert elapsed[0] != elapsed[1]
        assert re.search(r"sampling rate [\d.]+%", second)
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True, timeout=10)
        deadline = time.monotonic() + 30
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert status.exists(), _pane(session)
        assert status.read_text().strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=10)
    tshark = subprocess.run(["tshark", "-r", str(out)], capture_output=True, text=True, timeout=60)
    assert tshark.returncode == 0 and tshark.stdout.strip(), tshark.stderr
    assert not [ln for ln in tshark.stderr.splitlines() if "Running as user" not in ln]


def test_piped_json_run_validates_and_has_no_escape_codes(tmp_path: Path, harness) -> None:  # type: ignore[no-untyped-def]
    """A live capture piped (not a terminal) with --json: NDJSON only, valid against the schema."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    harness.server()
    out = tmp_path / "live.pcapng"
    proc = subprocess.Popen([sys.executable, "-m", "kstap", "tap", "--netns", harness.lab.server, "-i",
                             harness.lab.server_if, "-w", str(out), "--json", "--duration", "4", "--mode", "auto",
                             "--memory-budget", "512Mi"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.0)
    harness.send(udp_flows=20)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert b"\x1b" not in stdout and b"\x1b" not in stderr
    events = [json.loads(line) for line in stdout.decode().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "summary" and "stats" in kinds
    for e in events:
        jsonschema.validate(e, schema)
    assert events[-1]["captured"] > 0 and events[-1]["exit_code"] == 0


def test_piped_text_run_has_no_escape_codes(tmp_path: Path, harness) -> None:  # type: ignore[no-untyped-def]
    harness.server()
    proc = subprocess.Popen([sys.executable, "-m", "kstap", "tap", "--netns", harness.lab.server, "-i",
                             harness.lab.server_if, "-w", str(tmp_path / "t.pcapng"), "--duration", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.0)
    harness.send(udp_flows=3)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert b"\x1b" not in stdout + stderr
    assert b"packets captured" in stderr


def test_prometheus_scraped_twice_during_a_capture(tmp_path: Path, harness) -> None:  # type: ignore[no-untyped-def]
    parser = pytest.importorskip("prometheus_client.parser")
    harness.server()
    port = 19000 + os.getpid() % 1000
    proc = subprocess.Popen([sys.executable, "-m", "kstap", "tap", "--netns", harness.lab.server, "-i",
                             harness.lab.server_if, "-w", str(tmp_path / "m.pcapng"), "--duration", "12",
                             "--metrics-port", str(port), "--no-dashboard"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    flood = harness.flood(seconds=10, limit=20000, rate=400)
    try:
        def scrape() -> dict[str, float]:
            deadline = time.monotonic() + 15
            while True:
                try:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
            values = {}
            for family in parser.text_string_to_metric_families(body):
                for sample in family.samples:
                    if not sample.labels:
                        values[sample.name] = sample.value
            return values

        time.sleep(2.5)
        first = scrape()
        time.sleep(3)
        second = scrape()
    finally:
        flood.terminate()
        flood.wait(timeout=10)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "kstap_packets_received_total" in first
    assert second["kstap_packets_received_total"] > first["kstap_packets_received_total"] > 0
    assert second["kstap_bytes_captured_total"] > first["kstap_bytes_captured_total"]
    assert "kstap_sampling_rate" in second
