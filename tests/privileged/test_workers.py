"""--workers 2: one merged, time-ordered file; every flow (both directions) inside one worker."""

from __future__ import annotations

import os
import struct
from collections import Counter, defaultdict

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

EXPR = "udp or tcp port 5001"


def flow_key(frame: bytes) -> tuple[int, tuple[bytes, int], tuple[bytes, int]] | None:
    """Symmetric 5-tuple of an Ethernet/IPv4 TCP or UDP packet (None for anything else)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    frag = struct.unpack_from("!H", frame, 20)[0]
    if proto not in (6, 17) or frag & 0x3FFF:  # no fragments in this traffic
        return None
    src, dst = frame[26:30], frame[30:34]
    sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
    a, b = sorted([(src, sport), (dst, dport)])
    return proto, a, b


def test_two_workers_merge_and_keep_flows_whole(harness):
    k_path, t_path = harness.tmp / "workers.pcapng", harness.tmp / "tcpdump.pcap"
    harness.server()
    kst = harness.kstap(k_path, "-f", EXPR, "--workers", "2")
    assert "2 workers" in kst.stderr
    tcd = harness.tcpdump(t_path, EXPR)
    # 40 sockets x 2 ports = 80 UDP flows (echoed), 6 TCP connections; nothing is fragmented
    done = harness.send(udp_flows=40, udp_sizes=(10, 300, 1200), tcp_conns=6, tcp_sizes=(1, 100, 1000))
    assert done["udp_echoed"] == done["udp_sent"]
    harness.settle(k_path, t_path, timeout=15)
    assert kst.stop() == 0, kst.stderr
    assert tcd.stop() == 0

    k, t = harness.read(k_path), harness.read(t_path)
    assert k.error is None
    assert len(k.packets) == len(t.packets) > 0
    assert k.multiset() == t.multiset()
    times = [rec[0] for rec in k.records]
    assert times == sorted(times), "the merged file is not in time order"
    frames = harness.tshark(k_path)
    assert frames.returncode == 0 and frames.stderr == ""
    assert len(frames.lengths) == len(k.packets)
    assert frames.times == sorted(frames.times)

    # per-packet worker id from the EPB queue option
    queues = [info.queue if info else None for _, info in k.packets]
    assert None not in queues, "an EPB without the queue option"
    by_flow: dict[tuple, set[int]] = defaultdict(set)
    for rec, q in zip(k.records, queues, strict=True):
        key = flow_key(rec[3])
        assert key is not None, rec[3][:40].hex()
        by_flow[key].add(q)
    assert len(by_flow) == 80 + 6
    split = {key: ws for key, ws in by_flow.items() if len(ws) > 1}
    assert not split, f"flows split across workers: {split}"
    share = Counter(queues)
    assert set(share) == {0, 1}, f"one worker got nothing: {share}"

    # the summary's per-worker counts add up and match the file
    per = harness.per_worker(kst.stderr)
    assert per == dict(share)
    assert sum(per.values()) == harness.summary(kst.stderr)["captured"] == len(k.packets)


def test_two_workers_keep_ip_fragments_as_on_the_wire(harness):
    k_path, t_path = harness.tmp / "workers.pcapng", harness.tmp / "tcpdump.pcap"
    harness.server()
    kst = harness.kstap(k_path, "-f", "udp", "--workers", "2")
    tcd = harness.tcpdump(t_path, "udp")
    harness.send(udp_flows=2, udp_sizes=(10, 3000), udp_ports=(5001,), tcp_conns=0)  # 2 x (1 + 3) x 2
    harness.settle(t_path, minimum=16)
    harness.settle(k_path, timeout=3)
    assert kst.stop() == 0
    assert tcd.stop() == 0
    k, t = harness.read(k_path), harness.read(t_path)
    assert len(t.packets) == 16
    assert k.multiset() == t.multiset()
