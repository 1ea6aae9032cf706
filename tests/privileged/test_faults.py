"""Fault injection: a capture worker SIGKILLed or stopped, the CLI SIGKILLed, the kernel ring overflowing.

Each test runs real traffic in a lab (two network namespaces joined by a veth pair) and checks what is
on disk with kstap's reader, an independent block walk and tshark. The disk-full fault has its own
module (test_disk_full.py: a 64 KiB tmpfs). What kstap does in each case is written down in
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import procs
import pytest

from kstap.capture import fanout
from kstap.capture.afpacket import RingConfig
from kstap.capture.fanout import FanoutSource, WorkerLost
from kstap.filters.bpf import compile_filter

pytestmark = [pytest.mark.privileged, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

FLOWS_SRC = r'''
import socket, sys, time
dst, port, flows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seconds, rate = float(sys.argv[4]), float(sys.argv[5])
socks = []
for _ in range(flows):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    socks.append(s)
print("flooding", flush=True)
start = time.monotonic()
end, sent, limit = start + seconds, 0, int(rate * seconds)
while sent < limit and time.monotonic() < end:
    socks[sent % len(socks)].sendto(b"flow-%08d|" % sent + b"p" * (sent % 300), (dst, port))
    sent += 1
    ahead = start + sent / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
print(sent, flush=True)
'''


@contextlib.contextmanager
def flows(harness, *, n: int = 32, seconds: float = 20.0, rate: float = 1500.0) -> Iterator[subprocess.Popen[bytes]]:
    """UDP from ``n`` sockets (``n`` flows, spread over the fanout workers), bounded in time and count."""
    harness.server(echo_udp=False)
    lab = harness.lab
    p = lab.spawn(lab.client, [sys.executable, "-c", FLOWS_SRC, lab.server_ip, "5001", str(n), str(seconds), str(rate)],
                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout is not None and p.stdout.readline().strip() == b"flooding"
    try:
        yield p
    finally:
        if p.poll() is None:
            p.terminate()
        p.wait(timeout=5)


def isb_counters(path: Path) -> list[dict[int, int]]:
    """Options of every Interface Statistics Block, by an independent walk (not kstap's reader)."""
    raw = path.read_bytes()
    out, pos = [], 0
    while pos + 12 <= len(raw):
        btype, length = struct.unpack_from("<II", raw, pos)
        if length < 12 or pos + length > len(raw):
            break
        if btype == 5:
            opts, o = {}, pos + 8 + 12
            while o + 4 <= pos + length - 4:
                code, olen = struct.unpack_from("<HH", raw, o)
                if code == 0:
                    break
                if olen == 8 and code in (2, 3):  # isb_starttime/endtime: high 32 bits, then low
                    hi, lo = struct.unpack_from("<II", raw, o + 4)
                    opts[code] = (hi << 32) | lo
                elif olen == 8:  # the counters: a uint64 in the section's byte order (pcapng spec 4.6)
                    opts[code] = struct.unpack_from("<Q", raw, o + 4)[0]
                o += 4 + olen + (-olen % 4)
            out.append(opts)
        pos += length
    return out


# -- one fanout worker lost ----------------------------------------------------------------------------

def test_sigkill_of_one_worker_is_reported_and_the_file_stays_whole(harness):
    """``--workers 2``, one worker SIGKILLed mid-capture: the capture goes on (the worker is restarted
    and rejoins the fanout group), the CLI names the lost worker and exits 4 at the end, and the file is
    valid and holds everything delivered before the loss and both workers' packets after it."""
    path = harness.tmp / "lost.pcapng"
    kst = harness.kstap(path, "-f", "udp", "--workers", "2")
    workers = procs.children(kst.pid)
    assert len(workers) == 2
    harness.server(echo_udp=False)
    harness.send(udp_flows=8, udp_sizes=(10, 500), udp_ports=(5001,), tcp_conns=0, echo_udp=False, tag="before")
    assert harness.wait_count(path, 16) >= 16
    with flows(harness, seconds=20, rate=1500):
        assert harness.wait_count(path, 300) >= 300
        killed_at = time.time_ns()
        os.kill(workers[1], signal.SIGKILL)
        deadline = time.monotonic() + 3
        while kst.popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kst.popen.poll() is None, f"the capture stopped at the loss: {kst.stderr}"
        kst.send_signal(signal.SIGINT)
        rc = kst.wait()
    err = kst.stderr
    print(err)
    assert rc == 4, err
    assert "Traceback" not in err
    m = re.search(r"capture worker (\d) lost \(killed by SIGKILL\)", err)
    assert m, err
    lost = int(m.group(1))
    deadline = time.monotonic() + 10
    while any(procs.alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if procs.alive(w)], "a worker outlived the capture"

    cap = harness.read(path)
    assert cap.error is None
    assert harness.ends_with_isb(path)
    frames = harness.tshark(path)
    assert frames.returncode == 0 and frames.stderr == "", frames.stderr
    assert frames.times == sorted(frames.times)
    before = [rec for rec in cap.records if b"before" in rec[3]]
    assert len(before) == 16, "packets delivered before the loss are missing"
    assert len(cap.packets) == harness.summary(err)["captured"]
    assert "restarted it" in err and "1 capture worker loss(es) during the capture" in err, err
    queues = [info.queue if info else 0 for _, info in cap.packets]
    after = {q for rec, q in zip(cap.records, queues, strict=True) if rec[0] > killed_at + 200_000_000}
    assert after == {0, 1}, f"after the loss only workers {after} delivered (lost: {lost})"


def test_fanout_restarts_a_killed_worker_and_kills_a_stalled_one(harness, monkeypatch):
    """The fanout side, driven directly: a SIGKILLed worker is replaced and rejoins the fanout group; a
    SIGSTOPped one is declared stalled after STALL_SECONDS, killed and replaced; the merged stream stays
    in time order and every worker delivers again."""
    monkeypatch.setattr(fanout, "STALL_SECONDS", 1.0)
    lab = harness.lab
    program = compile_filter("udp", snaplen=262144)
    src = FanoutSource([lab.server_if], program, workers=2, ring=RingConfig(4 << 20, 1 << 20, 20), ns=lab.server,
                       restart=True)
    losses: list[WorkerLost] = []
    got: list[tuple[int, int]] = []

    def read_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                got.extend((rec[0], rec[5]) for rec in src.read(100))
            except WorkerLost as exc:
                losses.append(exc)

    try:
        with flows(harness, seconds=25, rate=1000):
            read_for(1.5)
            assert {w for _, w in got} == {0, 1}
            os.kill(src._procs[1].pid or 0, signal.SIGKILL)
            read_for(1.5)
            assert [(x.worker, x.how, x.restarted) for x in losses] == [(1, "killed by SIGKILL", True)]
            mark = time.time_ns()
            read_for(1.0)
            assert {w for ts, w in got if ts > mark} == {0, 1}, "the restarted worker delivers nothing"
            os.kill(src._procs[0].pid or 0, signal.SIGSTOP)
            read_for(3.0)
            assert [(x.worker, x.restarted) for x in losses[1:]] == [(0, True)]
            assert "no message for 1 s" in losses[1].how
            mark = time.time_ns()
            read_for(1.0)
            assert {w for ts, w in got if ts > mark} == {0, 1}
    finally:
        for p in src._procs.values():
            if p.pid and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
        src.close()
    times = [ts for ts, _ in got]
    assert times == sorted(times), "the merge lost its time order across the restarts"
    assert src.restarts == {0: 1, 1: 1} and not src.gone
    stats = src.stats()[0]
    assert stats.received >= len(got) > 1000


# -- the CLI SIGKILLed -----------------------------------------------------------------------------------

def test_sigkill_of_the_cli_every_file_readable_and_repair_recovers_the_last(harness, wireshark):
    """SIGKILL while writing a ring of files: every closed file is complete (ISB at its end, tshark
    clean); the open one reads up to its last complete block, and ``kstap repair`` makes a copy tshark
    reads without a warning, with the same packets our reader saw."""
    out = harness.tmp / "ring.pcapng"
    kst = harness.kstap(out, "-f", "udp", "-C", "0.2", "-W", "3")
    harness.server(echo_udp=False)
    harness.send(udp_flows=4, udp_sizes=(10, 700), udp_ports=(5001,), tcp_conns=0, echo_udp=False, tag="early")
    with flows(harness, seconds=20, rate=3000):
        deadline = time.monotonic() + 15
        while len(list(harness.tmp.glob("ring_*.pcapng"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        kst.send_signal(signal.SIGKILL)
        assert kst.wait() == -signal.SIGKILL
    files = sorted(harness.tmp.glob("ring_*.pcapng"))
    assert len(files) == 3, files
    for f in files[:-1]:
        assert harness.ends_with_isb(f), f"{f.name} was closed without its statistics block"
        assert len(wireshark.read_ok(f)) == len(harness.read(f).packets) > 0
        assert os.stat(f).st_mode & 0o777 == 0o600
    last = files[-1]
    cap = harness.read(last)  # complete blocks only; a cut tail is reported, not fatal
    frames = harness.tshark(last)
    assert frames.returncode in (0, 2) and (frames.stderr == "" or "cut short" in frames.stderr), frames.stderr
    assert len(frames.lengths) == len(cap.packets)

    fixed = harness.tmp / "fixed.pcapng"
    r = subprocess.run([sys.executable, "-m", "kstap", "repair", str(last), "-o", str(fixed)], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert (f"kept {len(cap.packets)} packets" in r.stderr) or (f"intact: {len(cap.packets)} packets" in r.stderr)
    assert "no statistics block" in r.stderr  # killed: none was written, and none is invented
    assert len(wireshark.read_ok(fixed)) == len(cap.packets)
    again = harness.read(fixed)
    assert again.error is None and again.records == cap.records and not again.statistics
    assert fixed.read_bytes() == last.read_bytes()[: fixed.stat().st_size]  # a prefix: nothing added


# -- the kernel ring overflows ---------------------------------------------------------------------------

def test_ring_overflow_drops_are_counted_reported_and_in_the_isb(harness):
    """A 1 MiB ring (-B 1) and kstap SIGSTOPped for 1 s under a flood: the kernel drops, and the drops are
    in the alert, the closing summary, and the file's Interface Statistics Block (isb_ifdrop)."""
    path = harness.tmp / "overflow.pcapng"
    kst = harness.kstap(path, "-f", "udp", "-B", "1")
    with flows(harness, n=8, seconds=15, rate=8000):
        assert harness.wait_count(path, 500) >= 500
        kst.send_signal(signal.SIGSTOP)
        time.sleep(1.0)
        kst.send_signal(signal.SIGCONT)
        assert kst.wait_lines("kernel dropped", 1, timeout=5) >= 1, kst.stderr
    time.sleep(0.3)
    rc = kst.stop()
    err = kst.stderr
    assert rc == 0, err
    nums = harness.summary(err)
    assert nums["dropped"] > 0, err
    assert re.search(r"^kstap: warn: (drops: )?kernel dropped \d+ packets \(ring full\)$", err, re.M), err
    isbs = isb_counters(path)
    assert len(isbs) == 1
    assert isbs[0][5] == nums["dropped"]  # isb_ifdrop
    assert isbs[0][4] == nums["received"]  # isb_ifrecv
    assert isbs[0][8] == nums["captured"] == len(harness.read(path).packets)  # isb_usrdeliv
    assert nums["received"] == nums["captured"] + nums["dropped"]
    frames = harness.tshark(path)
    assert frames.returncode == 0 and frames.stderr == "", frames.stderr
