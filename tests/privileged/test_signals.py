"""Stopping kstap with SIGINT/SIGTERM (clean file, exit 0) and SIGKILL (complete blocks stay readable)."""

from __future__ import annotations

import os
import signal
import time

import procs
import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

EXPR = "udp"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signal_mid_capture(harness, signum, workers):
    k_path = harness.tmp / "sig.pcapng"
    harness.server()
    kst = harness.kstap(k_path, "-f", EXPR, "--workers", str(workers))
    flood = harness.flood(seconds=30, limit=15000, rate=400)
    try:
        assert harness.wait_count(k_path, 100) >= 100, "traffic did not reach the capture"
        kst.send_signal(signum)  # traffic is still flowing
        rc = kst.wait()
    finally:
        flood.terminate()
        flood.wait(timeout=5)
    assert rc == 0, kst.stderr
    assert "Traceback" not in kst.stderr
    nums = harness.summary(kst.stderr)
    assert f"kstap: wrote {k_path}" in kst.stderr
    if workers > 1:
        assert sum(harness.per_worker(kst.stderr).values()) == nums["captured"]

    assert harness.ends_with_isb(k_path), "the file does not end with an Interface Statistics Block"
    k = harness.read(k_path)
    assert k.error is None
    assert len(k.packets) == nums["captured"] >= 100
    assert len(k.statistics) == 1
    isb = k.statistics[0]
    assert isb.delivered == len(k.packets)
    assert isb.received is not None and isb.received >= len(k.packets)
    assert isb.dropped == nums["dropped"]

    frames = harness.tshark(k_path)
    assert frames.returncode == 0 and frames.stderr == "", frames.stderr  # no warning, no error
    assert len(frames.lengths) == len(k.packets)
    if workers > 1:
        assert frames.times == sorted(frames.times)  # the merge sorts
    else:
        assert harness.nearly_ordered(frames.times)  # ring order, see conftest.JITTER


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_leaves_complete_blocks_readable(harness, workers):
    k_path = harness.tmp / "killed.pcapng"
    harness.server()
    kst = harness.kstap(k_path, "-f", EXPR, "--workers", str(workers))
    children = procs.children(kst.pid)
    assert len(children) == (workers if workers > 1 else 0)
    # phase 1: a known exchange, well before the kill (4 datagrams, each echoed)
    harness.send(udp_flows=1, udp_sizes=(10, 1000), tcp_conns=0, tag="phase-one")
    assert harness.wait_count(k_path, 8) >= 8
    # phase 2: traffic flowing when the process is killed
    flood = harness.flood(seconds=30, limit=15000, rate=1000)
    try:
        harness.wait_count(k_path, 100)
        kst.send_signal(signal.SIGKILL)
        assert kst.wait() == -signal.SIGKILL
    finally:
        flood.terminate()
        flood.wait(timeout=5)
        # the workers notice their parent is gone (broken pipe) and exit by themselves
        deadline = time.monotonic() + 10
        while any(procs.alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        orphans = [c for c in children if procs.alive(c)]
        for c in orphans:
            os.kill(c, signal.SIGKILL)
    assert not orphans, f"worker processes {orphans} outlived their killed parent"

    k = harness.read(k_path)  # complete blocks only; a cut-short last block is reported, not fatal
    payloads = [rec[3] for rec in k.records]
    phase_one = [p for p in payloads if b"phase-one" in p]
    assert len(phase_one) == 8, f"{len(phase_one)} of the 8 early packets are in the file ({k.error})"
    assert len(k.packets) >= 100
    assert not k.statistics  # killed: no ISB was written

    frames = harness.tshark(k_path)
    # tshark may report that the file was cut short (exit 2), but it reads every complete block
    assert frames.returncode in (0, 2), frames.stderr
    assert frames.stderr == "" or "cut short" in frames.stderr, frames.stderr
    assert len(frames.lengths) == len(k.packets)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_the_process_group_with_workers(harness, signum):
    """Ctrl-C in a terminal (or a service manager's stop) signals the workers too, not only the parent."""
    k_path = harness.tmp / "group.pcapng"
    harness.server()
    kst = harness.kstap(k_path, "-f", EXPR, "--workers", "2")
    flood = harness.flood(seconds=30, limit=15000, rate=400)
    try:
        assert harness.wait_count(k_path, 100) >= 100
        kst.send_signal(signum, group=True)
        rc = kst.wait()
    finally:
        flood.terminate()
        flood.wait(timeout=5)
    assert rc == 0, kst.stderr
    nums = harness.summary(kst.stderr)
    assert sum(harness.per_worker(kst.stderr).values()) == nums["captured"]
    assert harness.ends_with_isb(k_path)
    k = harness.read(k_path)
    assert k.error is None and len(k.packets) == nums["captured"] >= 100
    frames = harness.tshark(k_path)
    assert frames.returncode == 0 and frames.stderr == "", frames.stderr
