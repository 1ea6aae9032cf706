"""A file capture of a trickle: its once-a-second tick rides on the blocks' wake-ups.

At 400 pps nothing fills a block: the kernel's retire timer hands one over about every 0.5 s, and
each hand-over wakes the capture. The tick used to be a wake-up of its own on top (three a
second); now it runs at a block's wake-up (two a second), still about once a second
(``kstap/pipeline/tick_schedule.py``).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _wakeups(pid: int) -> int:
    """How often the capture's main thread blocked and was woken (its voluntary context switches)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc/PID/status")


def test_a_trickle_to_a_file_wakes_once_a_block_and_ticks_once_a_second(harness, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    events = tmp_path / "events.ndjson"
    with open(events, "wb") as out:
        proc = harness.kstap(tmp_path / "t.pcapng", "--json", "--no-dashboard", "-f", "udp", stdout=out, wait=False)
        deadline = time.monotonic() + 20
        while '"event":"start"' not in events.read_text():  # --json says it is listening on stdout
            assert proc.popen.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        flood = harness.flood(seconds=9, limit=3600, rate=400)
        try:
            time.sleep(2.0)  # past the start and the first block
            before, start = _wakeups(proc.pid), time.monotonic()
            time.sleep(4.0)
            woken, seconds = _wakeups(proc.pid) - before, time.monotonic() - start
        finally:
            assert proc.stop() == 0
            flood.wait(timeout=15)
    # a block every ~0.5 s is 8 wake-ups in 4 s; a tick of its own each second would add 4
    assert woken <= 10, f"{woken} wake-ups in {seconds:.1f} s"
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    summary = next(e for e in lines if e["event"] == "summary")
    assert summary["captured"] >= 1000  # the trickle was there all along (400 pps)
    stats = [e["time"] for e in lines if e["event"] == "stats"]
    gaps = [b - a for a, b in itertools.pairwise(stats)]
    assert len(stats) >= 3, stats
    assert all(0.7 <= g <= 1.6 for g in gaps[1:]), gaps
