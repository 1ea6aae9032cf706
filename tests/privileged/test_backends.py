"""Capture backends and stop conditions: libpcap = af_packet, pf_ring refused, best, -c, --duration, two -i."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

EXPR = "udp or tcp port 5001"
UDP_ONLY = "udp port 5001"


def test_libpcap_captures_what_af_packet_captures(harness):
    a_path, l_path = harness.tmp / "af_packet.pcapng", harness.tmp / "libpcap.pcapng"
    harness.server()
    af = harness.kstap(a_path, "-f", EXPR, "--capture", "af_packet")
    lp = harness.kstap(l_path, "-f", EXPR, "--capture", "libpcap")
    assert "(libpcap)" in lp.stderr and "(af_packet)" in af.stderr
    harness.send(udp_sizes=(0, 64, 700, 1472, 3000), tcp_conns=2)
    harness.settle(a_path, l_path)
    assert af.stop() == 0, af.stderr
    assert lp.stop() == 0, lp.stderr

    a, lib = harness.read(a_path), harness.read(l_path)
    assert a.error is None and lib.error is None
    assert len(a.packets) == len(lib.packets) > 0
    assert a.multiset() == lib.multiset()
    assert [i.name for i in lib.interfaces] == [harness.lab.server_if]
    assert lib.interfaces[0].filter == EXPR
    assert lib.statistics and lib.statistics[0].delivered == len(lib.packets)
    # both carry nanosecond kernel timestamps of the same packets: they agree closely
    for x, y in zip(sorted(r[0] for r in a.records), sorted(r[0] for r in lib.records), strict=True):
        assert abs(x - y) < 1_000_000  # 1 ms
    frames = harness.tshark(l_path)
    assert frames.returncode == 0 and frames.stderr == ""
    assert harness.nearly_ordered(frames.times), frames.times


def test_pf_ring_unavailable_is_a_clear_error(harness):
    if os.path.isdir("/proc/net/pf_ring"):
        pytest.skip("this host has PF_RING")
    out = harness.tmp / "never.pcapng"
    p = harness.kstap(out, "-f", EXPR, "--capture", "pf_ring", wait=False)
    assert p.wait() == 3
    lines = p.stderr.splitlines()
    assert len(lines) == 2, p.stderr
    assert lines[0].startswith("kstap: error: PF_RING is not available: ")
    assert "pf_ring" in lines[0]
    assert lines[1].startswith("hint: ") and "af_packet" in lines[1]
    assert not out.exists()


def test_best_picks_af_packet(harness):
    k_path = harness.tmp / "best.pcapng"
    harness.server()
    kst = harness.kstap(k_path, "-f", UDP_ONLY, "--capture", "best")
    assert "(af_packet)" in kst.stderr
    harness.send(udp_sizes=(1, 100, 1000), udp_ports=(5001,), tcp_conns=0)
    assert harness.settle(k_path, minimum=6) == [6]  # 3 datagrams, each echoed
    assert kst.stop() == 0
    assert harness.summary(kst.stderr)["captured"] == 6
    k = harness.read(k_path)
    assert k.error is None and k.statistics and len(k.packets) == 6


def test_count_stops_at_exactly_count(harness):
    k_path, t_path = harness.tmp / "count.pcapng", harness.tmp / "t.pcap"
    harness.server()
    kst = harness.kstap(k_path, "-f", UDP_ONLY, "-c", "7")
    tcd = harness.tcpdump(t_path, UDP_ONLY)
    harness.send(udp_sizes=tuple(range(10, 210, 10)), udp_ports=(5001,), tcp_conns=0)  # 40 packets
    assert kst.wait() == 0, kst.stderr  # it stops by itself
    harness.settle(t_path, minimum=40)
    assert tcd.stop() == 0
    k, t = harness.read(k_path), harness.read(t_path)
    assert k.error is None
    assert len(k.packets) == 7
    assert harness.summary(kst.stderr)["captured"] == 7
    assert [r[3] for r in k.records] == [r[3] for r in t.records[:7]]  # the first seven
    assert k.statistics and k.statistics[0].delivered == 7
    frames = harness.tshark(k_path)
    assert frames.returncode == 0 and frames.stderr == "" and len(frames.lengths) == 7


def test_duration_stops_in_time(harness):
    k_path = harness.tmp / "duration.pcapng"
    harness.server()
    kst = harness.kstap(k_path, "-f", UDP_ONLY, "--duration", "1.5")
    started = time.monotonic()
    flood = harness.flood(seconds=10, limit=5000, rate=200)
    try:
        rc = kst.wait(timeout=15)
        took = time.monotonic() - started
    finally:
        flood.terminate()
        flood.wait(timeout=5)
    assert rc == 0, kst.stderr
    assert 1.4 <= took <= 1.5 + 3.0, f"--duration 1.5 took {took:.2f}s"
    k = harness.read(k_path)
    assert k.error is None and k.statistics
    assert len(k.packets) == harness.summary(kst.stderr)["captured"] > 0
    span = (k.records[-1][0] - k.records[0][0]) / 1e9
    assert span <= 1.6


def test_two_interfaces_one_idb_each(harness):
    """-i SERVER_VETH -i lo inside the server namespace: one IDB per interface, packets on each."""
    lab = harness.lab
    k_path = harness.tmp / "two.pcapng"
    harness.server()
    kst = harness.kstap(k_path, "-f", UDP_ONLY, "-i", "lo")
    assert kst.wait_lines("kstap: listening on", 2) == 2  # one line per interface
    harness.send(udp_sizes=(1, 100, 1000), udp_ports=(5001,), tcp_conns=0)  # 6 packets on the veth
    local = ("import socket\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             "for i in range(5): s.sendto(b'lo-%d' % i, ('127.0.0.1', 5001))\n")
    subprocess.run(["ip", "netns", "exec", lab.server, sys.executable, "-c", local], check=True, timeout=30)
    assert harness.settle(k_path, minimum=11) == [11]
    assert kst.stop() == 0

    k = harness.read(k_path)
    assert [i.name for i in k.interfaces] == [lab.server_if, "lo"]
    assert all(i.filter == UDP_ONLY for i in k.interfaces)
    per_if = Counter(r[4] for r in k.records)
    assert per_if == {0: 6, 1: 5}  # lo: each datagram once, not once leaving and once arriving
    assert all(b"lo-" in r[3] for r in k.records if r[4] == 1)
    assert sorted(s.if_id for s in k.statistics) == [0, 1]
    info = harness.capinfos(k_path)
    assert "Number of interfaces in file: 2" in info
    assert f"Name = {lab.server_if}" in info and "Name = lo" in info
    frames = harness.tshark(k_path)
    assert frames.returncode == 0 and frames.stderr == ""
    assert Counter(frames.interface_ids) == {0: 6, 1: 5}
    assert harness.nearly_ordered(frames.times), frames.times
