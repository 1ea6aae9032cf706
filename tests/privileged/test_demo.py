"""``kstap demo`` end to end: real namespaces, real traffic, tshark reads what was written."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

REPO = Path(__file__).resolve().parents[2]
KSTAP = [sys.executable, "-m", "kstap"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _tshark(path: Path, display_filter: str, field: str) -> list[str]:
    r = subprocess.run(["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields", "-e", field],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def _lab_namespaces(stderr: str) -> list[str]:
    """The two namespaces this demo run created (it names them on stderr)."""
    m = re.search(r"demo: namespaces (\S+) \(.*\) <-veth-> (\S+) \(", stderr)
    assert m, stderr
    return [m.group(1), m.group(2)]


def _assert_gone(namespaces: list[str]) -> None:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    present = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert not present & set(namespaces), f"left behind: {present & set(namespaces)}"


def _assert_traffic(path: Path, *, min_requests: int) -> None:
    methods = _tshark(path, "http.request", "http.request.method")
    assert len(methods) >= min_requests and set(methods) <= {"GET", "POST"}, methods
    queries = _tshark(path, "dns.flags.response == 0", "dns.qry.name")
    assert queries and all(q.endswith(".demo.kstap.test") for q in queries), queries
    assert _tshark(path, "dns.flags.response == 1 && dns.a", "dns.a")


def test_demo_captures_http_dns_and_udp(tmp_path: Path) -> None:
    out = tmp_path / "demo.pcapng"
    r = subprocess.run([*KSTAP, "demo", "--duration", "4", "--mode", "full", "-w", str(out),
                        "--entries", str(tmp_path / "entries.ndjson")],
                       capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _assert_gone(_lab_namespaces(r.stderr))
    _assert_traffic(out, min_requests=20)
    entries = [json.loads(line) for line in (tmp_path / "entries.ndjson").read_text().splitlines()]
    assert {e["protocol"] for e in entries} >= {"http/1.1", "dns"}
    assert "nosuch.demo.kstap.test" in _tshark(out, "dns.flags.rcode == 3", "dns.qry.name")
    assert len(_tshark(out, "udp.dstport == 9", "frame.number")) >= 100
    assert re.search(r"demo: client sent \d+ HTTP requests \(0 failed\)", r.stderr), r.stderr
    assert f"tshark -r {out}" in r.stderr


def test_demo_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    out = tmp_path / "demo.pcapng"
    p = subprocess.Popen([*KSTAP, "demo", "--duration", "60", "--mode", "full", "-w", str(out)], cwd=tmp_path,
                         stderr=subprocess.PIPE,
                         text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stderr or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while not any("listening on" in line for line in lines) and time.monotonic() < deadline:
            assert p.poll() is None, "".join(lines)
            time.sleep(0.05)
        time.sleep(2)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 0, "".join(lines)
        assert time.monotonic() - t0 < 15
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    reader.join(timeout=5)
    stderr = "".join(lines)
    _assert_gone(_lab_namespaces(stderr))
    _assert_traffic(out, min_requests=5)


def test_demo_without_root_exits_3_with_a_hint() -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    probe = subprocess.run([*NOBODY, sys.executable, "-c", "import kstap.cli.main"], capture_output=True,
                           text=True, cwd="/", timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"the venv is not readable by uid 65534: {probe.stderr.strip()[-200:]}")
    r = subprocess.run([*NOBODY, *KSTAP, "demo", "--duration", "1"], capture_output=True, text=True,
                       cwd="/", timeout=60)
    assert r.returncode == 3, r.stderr
    assert "needs root" in r.stderr
    assert "kstap tap --read examples/sample.pcapng -w out.pcapng" in r.stderr


def test_make_sample_writes_a_small_readable_sample(tmp_path: Path) -> None:
    out = tmp_path / "sample.pcapng"
    r = subprocess.run([sys.executable, str(REPO / "examples" / "make_sample.py"), "--out", str(out),
                        "--duration", "2"], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    assert 0 < out.stat().st_size < 200_000
    _assert_traffic(out, min_requests=5)


def test_demo_runs_in_auto_mode_by_default(tmp_path: Path) -> None:
    """The default demo samples in auto mode: the file says so, and the rate moved."""
    out = tmp_path / "auto.pcapng"
    r = subprocess.run([*KSTAP, "demo", "--duration", "5", "-w", str(out), "--no-dashboard"],
                       capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    capinfos = subprocess.run(["capinfos", str(out)], capture_output=True, text=True).stdout
    assert "kstap: run mode=auto rate=0.1" in capinfos
    notes = _tshark(out, "frame.comment", "frame.comment")
    assert any("mode=auto" in n for n in notes)
    assert (tmp_path / "demo.entries.ndjson").exists()
