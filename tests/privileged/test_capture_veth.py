"""kstap tap on a veth pair captures exactly what tcpdump captures (same expression, same time)."""

from __future__ import annotations

import os
import subprocess
from collections import Counter

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

ALL_OURS = "udp or tcp port 5001"
PART = "tcp or (udp port 5002 and greater 300)"
"""Excludes every UDP datagram to/from 5001, the small ones to 5002 and later IP fragments."""
SIZES = (0, 1, 18, 64, 200, 512, 1000, 1472, 2000, 4000)
"""UDP payload sizes: empty, tiny, around the 60-byte Ethernet minimum, the MTU edge, fragmented."""


def test_same_packets_as_tcpdump(harness) -> None:
    """Two filters, each captured by kstap and tcpdump at once on the server's veth end."""
    lab = harness.lab
    harness.server()
    runs = {}
    for n, expr in enumerate((ALL_OURS, PART)):
        k_path, t_path = harness.tmp / f"kstap{n}.pcapng", harness.tmp / f"tcpdump{n}.pcap"
        runs[expr] = (k_path, t_path, harness.kstap(k_path, "-f", expr), harness.tcpdump(t_path, expr))
    harness.send(udp_sizes=SIZES, tcp_conns=3)
    for k_path, t_path, _, _ in runs.values():
        harness.settle(k_path, t_path)
    for _, _, kst, tcd in runs.values():
        assert kst.stop() == 0, kst.stderr
        assert tcd.stop() == 0, tcd.stderr

    counts = {}
    for expr, (k_path, t_path, kst, _) in runs.items():
        k, t = harness.read(k_path), harness.read(t_path)
        assert k.error is None and t.error is None
        assert len(k.packets) == len(t.packets) > 0, expr
        assert k.multiset() == t.multiset(), expr
        assert harness.summary(kst.stderr)["captured"] == len(k.packets)
        counts[expr] = len(k.packets)

        frames = harness.tshark(k_path)
        assert frames.returncode == 0 and frames.stderr == "", frames.stderr
        assert len(frames.lengths) == len(k.packets)
        assert Counter(frames.lengths) == Counter((rec[2], rec[1]) for rec in t.records)
        assert harness.nearly_ordered(frames.times), frames.times  # ring order: conftest.JITTER
        info = harness.capinfos(k_path)
        assert f"Name = {lab.server_if}" in info
        assert f"Filter string = {expr}" in info
        assert "Number of interfaces in file: 1" in info
    # the second filter really excluded part of the traffic, and kept some
    assert 0 < counts[PART] < counts[ALL_OURS]


def test_snaplen_keeps_original_length(harness) -> None:
    k_path, t_path = harness.tmp / "k.pcapng", harness.tmp / "t.pcap"
    harness.server()
    kst = harness.kstap(k_path, "-f", ALL_OURS, "--snaplen", "64")
    tcd = harness.tcpdump(t_path, ALL_OURS, "-s", "64")
    harness.send(udp_sizes=SIZES, tcp_conns=1)
    harness.settle(k_path, t_path)
    assert kst.stop() == 0
    assert tcd.stop() == 0

    k, t = harness.read(k_path), harness.read(t_path)
    assert len(k.packets) == len(t.packets) > 0
    assert k.multiset() == t.multiset()
    assert k.interfaces[0].snaplen == 64
    for rec in k.records:
        assert rec[1] == min(64, rec[2]) == len(rec[3])
    assert max(rec[2] for rec in k.records) > 1000  # long packets were cut, their length kept
    frames = harness.tshark(k_path)
    assert frames.returncode == 0 and frames.stderr == ""
    assert [c for _, c in frames.lengths] == [rec[1] for rec in k.records]
    assert [f for f, _ in frames.lengths] == [rec[2] for rec in k.records]
    assert "Capture length = 64" in harness.capinfos(k_path)


def test_write_to_stdout(harness) -> None:
    """-w - : pcapng on stdout (piped to a file), the human summary on stderr only."""
    out_path, t_path = harness.tmp / "stdout.pcapng", harness.tmp / "t.pcap"
    harness.server()
    with open(out_path, "wb") as out:
        kst = harness.kstap("-", "-f", ALL_OURS, stdout=out)
    tcd = harness.tcpdump(t_path, ALL_OURS)
    harness.send(tcp_conns=1)
    harness.settle(out_path, t_path)
    assert kst.stop() == 0
    assert tcd.stop() == 0

    raw = out_path.read_bytes()
    assert raw[:4] == b"\x0a\x0d\x0d\x0a"  # starts with a Section Header Block, no text before it
    k, t = harness.read(out_path), harness.read(t_path)
    assert k.error is None  # and nothing after the last block either
    assert k.multiset() == t.multiset()
    assert k.statistics, "no Interface Statistics Block at the end of the stream"
    nums = harness.summary(kst.stderr)
    assert nums["captured"] == len(k.packets) > 0
    assert "kstap: wrote" not in kst.stderr
    frames = harness.tshark(out_path)
    assert frames.returncode == 0 and frames.stderr == ""
    assert len(frames.lengths) == len(k.packets)
    # tshark reads the stream from a pipe too, as in 'kstap tap -w - | tshark -r -'
    with open(out_path, "rb") as f:
        r = subprocess.run(["tshark", "-r", "-", "-T", "fields", "-e", "frame.number"], stdin=f,
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert len(r.stdout.split()) == len(k.packets)
