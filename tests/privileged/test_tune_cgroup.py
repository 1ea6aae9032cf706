"""``kstap tune`` on a reproducible workload converges, and its recommendation holds (issue 4, #7).

The workload is a capture file made here: 2,000 HTTP/1.1 connections, each sending a 40 KB request
head in 1,400-byte segments, interleaved so every head is incomplete at once. Dissecting all of
them needs ~80 MB on top of kstap itself; each trial replays the file through a real capture
worker in a real memory cgroup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from kstap.control.memcg import run_limited
from kstap.model import Interface
from kstap.sinks.files import PcapngFiles

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (memory cgroups)")

FLOWS = 2000
SEGMENTS = 29
SEGMENT = 1400
BUDGET = "90Mi"


def frame(src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int, ack: int, data: bytes) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, data=data)
    ip = dpkt.ip.IP(src=src, dst=dst, p=6, data=tcp)
    ip.len = 20 + len(bytes(tcp))
    return bytes(dpkt.ethernet.Ethernet(type=0x0800, data=ip))


def make_workload(path: Path) -> None:
    server = bytes([10, 0, 0, 1])
    out = PcapngFiles(str(path), [Interface("synthetic")], counters=lambda: [])
    ts = 1_700_000_000 * 10**9
    clients = [(bytes([10, 1, i >> 8, i & 255]), 40000 + i % 20000) for i in range(FLOWS)]
    batch = []
    for addr, port in clients:  # handshakes
        for raw in (frame(addr, server, port, 80, 0x02, 1000, 0, b""),
                    frame(server, addr, 80, port, 0x12, 5000, 1001, b""),
                    frame(addr, server, port, 80, 0x10, 1001, 5001, b"")):
            ts += 1000
            batch.append((ts, len(raw), len(raw), raw, 0, 0))
    out.write(batch)
    filler = (b"X-Filler: " + b"a" * 88 + b"\r\n") * (SEGMENT // 100)
    for seg in range(SEGMENTS):  # heads, round robin: every connection is mid-head at once
        batch = []
        for i, (addr, port) in enumerate(clients):
            payload = (f"POST /upload/{i} HTTP/1.1\r\nHost: x\r\n".encode() + filler)[:SEGMENT] if seg == 0 else filler
            body = payload[:SEGMENT].ljust(SEGMENT, b"a")
            raw = frame(addr, server, port, 80, 0x18, 1001 + seg * SEGMENT, 5001, body)
            ts += 1000
            batch.append((ts, len(raw), len(raw), raw, 0, 0))
        out.write(batch)
    out.close()


def test_tune_converges_and_its_rate_is_stable(tmp_path: Path) -> None:
    workload = tmp_path / "heads.pcapng"
    make_workload(workload)
    run = subprocess.run([sys.executable, "-m", "kstap", "tune", "--read", str(workload), "--memory-budget", BUDGET,
                          "--json", "--max-steps", "14"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    result = events[-1]
    assert result["event"] == "result"
    assert steps[0]["phase"] == "baseline" and steps[0]["oom"], "full rate must not fit, or tuning is trivial"
    assert any(not s["oom"] for s in steps)
    assert steps[-1]["phase"] == "stability" and not steps[-1]["oom"]
    rate = result["recommended_rate"]
    assert 0.05 < rate < 1.0
    # the rate just above the recommendation failed somewhere in the search (a real boundary)
    assert any(s["oom"] and rate < s["rate"] <= rate + 0.15 for s in steps), steps
    # an independent stability run at the recommended rate: no OOM kill
    again = run_limited([sys.executable, "-m", "kstap", "tap", "--read", str(workload), "--no-dashboard",
                         "-w", "/dev/null", "--entries", "/dev/null", "--dissect-memory", "4096", "--seed", "0x5eed",
                         "--mode", "percentage", "--rate", f"{rate:.4f}"], 90 << 20, timeout=300)
    assert not again.oom and again.returncode == 0, again.stderr
