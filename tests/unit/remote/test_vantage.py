"""Folding a node's copies of a packet (veth, bridge, uplink) into one; which nodes saw a flow."""

from __future__ import annotations

import dpkt

from kstap.remote.vantage import NodeFold, fingerprint


def frame(ttl: int, mac: bytes, payload: bytes = b"GET / HTTP/1.1\r\n\r\n", sport: int = 40000) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=8080, seq=1, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, data=payload)
    ip = dpkt.ip.IP(src=bytes([10, 250, 1, 5]), dst=bytes([10, 250, 2, 3]), ttl=ttl, p=dpkt.ip.IP_PROTO_TCP,
                    id=7, data=tcp)
    ip.len = len(bytes(ip))
    return bytes(dpkt.ethernet.Ethernet(src=mac, dst=b"\x02" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def test_a_packet_routed_through_the_node_is_one_packet() -> None:
    fold = NodeFold()
    veth, bridge, uplink = frame(64, b"\x0a" * 6), frame(64, b"\x0b" * 6), frame(63, b"\x0c" * 6)
    assert fold.admit(0, "n1", 1_000, veth, 1, 0)
    assert not fold.admit(0, "n1", 1_020, bridge, 1, 1)  # other MACs: the same packet
    assert not fold.admit(0, "n1", 1_050, uplink, 1, 2)  # one hop later: TTL and checksum differ
    assert fold.folded == 2
    # the other node's copy is its own vantage point
    assert fold.admit(1, "n2", 1_300, frame(62, b"\x0d" * 6), 1, 0)
    assert fold.nodes_of("10.250.1.5:40000", "10.250.2.3:8080") == ["n1", "n2"]
    assert fold.nodes_of("10.250.2.3:8080", "10.250.1.5:40000") == ["n1", "n2"]


def test_what_is_not_a_copy_is_kept() -> None:
    fold = NodeFold(window_ns=1_000_000)
    pkt = frame(64, b"\x0a" * 6)
    assert fold.admit(0, "n1", 0, pkt, 1, 0)
    assert fold.admit(0, "n1", 10, pkt, 1, 0)  # the same interface twice: a real second packet
    assert fold.admit(0, "n1", 5_000_000, pkt, 1, 1)  # outside the window
    assert fold.admit(0, "n1", 5_000_010, frame(64, b"\x0a" * 6, payload=b"other"), 1, 2)
    assert fold.admit(0, "n1", 5_000_020, b"\x00" * 60, 1, 1)  # not IP: never folded
    assert fold.folded == 0


def test_fingerprint_masks_only_the_hop_fields() -> None:
    a, b = fingerprint(frame(64, b"\x0a" * 6), 1), fingerprint(frame(3, b"\x0b" * 6), 1)
    assert a is not None and b is not None and a == b
    assert a[1] == ("10.250.1.5:40000", "10.250.2.3:8080")
    assert fingerprint(frame(64, b"\x0a" * 6, sport=1), 1) != a
    assert fingerprint(b"\x00" * 10, 1) is None
