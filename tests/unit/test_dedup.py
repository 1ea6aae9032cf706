"""The -i any dedup rule: the same network bytes on another interface within the window is a copy."""

from __future__ import annotations

import dpkt

from kstap.dedup import Dedup, digest, fingerprint
from kstap.remote.vantage import NodeFold

MS = 1_000_000


def ipv4(ttl: int = 64, ident: int = 1, payload: bytes = b"n00001") -> bytes:
    ip = dpkt.ip.IP(src=b"\x0a\0\0\x01", dst=b"\x0a\0\0\x02", p=17, ttl=ttl, id=ident,
                    data=dpkt.udp.UDP(sport=1000, dport=53, data=payload))
    return bytes(ip)  # dpkt fills the checksum: a TTL change changes it too


def ipv6(hlim: int = 64) -> bytes:
    u = dpkt.udp.UDP(sport=1000, dport=53, data=b"n00001")
    return bytes(dpkt.ip6.IP6(src=b"\xfd" + b"\0" * 15, dst=b"\xfd" + b"\0" * 14 + b"\x02", nxt=17, hlim=hlim,
                              plen=len(bytes(u)), data=u))


def test_a_routed_hop_is_the_same_packet_a_new_id_is_not() -> None:
    assert digest(0x0800, ipv4(64), 34) == digest(0x0800, ipv4(63), 34)  # TTL and checksum masked
    assert digest(0x86DD, ipv6(64), 54) == digest(0x86DD, ipv6(63), 54)  # hop limit masked
    assert digest(0x0800, ipv4(ident=1), 34) != digest(0x0800, ipv4(ident=2), 34)  # a retransmission
    assert digest(0x0800, ipv4(payload=b"n00001"), 34) != digest(0x0800, ipv4(payload=b"n00002"), 34)
    assert digest(0x0806, b"arp" * 9, 27) != digest(0x0800, b"arp" * 9, 27)


def test_copies_on_other_interfaces_within_the_window_are_removed() -> None:
    d = Dedup(50 * MS)
    key = digest(0x0800, ipv4(), 34)
    assert not d.copy(key, 3, 0)  # the sender's veth: kept
    assert d.copy(key, 5, 20_000)  # the receiver's veth, 20 µs later: a copy
    assert d.copy(key, 2, 40_000)  # the bridge: a copy too
    assert d.removed == 2


def test_the_same_interface_again_and_late_copies_are_kept() -> None:
    d = Dedup(50 * MS)
    key = digest(0x0800, ipv4(), 34)
    assert not d.copy(key, 3, 0)
    assert not d.copy(key, 3, 1 * MS)  # twice on one interface: really on the wire twice
    assert not d.copy(key, 5, 200 * MS)  # past the window: a new packet
    assert d.removed == 0


def test_the_table_forgets_what_is_older_than_the_window() -> None:
    d = Dedup(10 * MS)
    for i in range(1000):
        d.copy(i, 1, i * MS)
    assert len(d) <= 11


def ethernet(net: bytes, etype: int, mac: bytes = b"\x0a" * 6, vlan: int | None = None) -> bytes:
    tag = b"" if vlan is None else b"\x81\x00" + vlan.to_bytes(2, "big")
    return b"\x02" * 6 + mac + tag + etype.to_bytes(2, "big") + net


def sll2(net: bytes, etype: int, ifindex: int) -> bytes:
    """A LINUX_SLL2 frame as a node worker's cooked ``-i any`` capture writes it."""
    return etype.to_bytes(2, "big") + b"\0\0" + ifindex.to_bytes(4, "big") + b"\0\x01\x04\x06" + b"\x0a" * 8 + net


ARP = bytes(dpkt.arp.ARP(spa=b"\x0a\0\0\x01", tpa=b"\x0a\0\0\x02"))
SCENARIO = [  # (ts, interface, ethertype, network bytes): what one node's interfaces saw
    (0, 3, 0x0800, ipv4(64)),  # the sender's veth
    (20_000, 5, 0x0800, ipv4(63)),  # routed on: TTL - 1, a copy
    (30_000, 3, 0x0800, ipv4(64)),  # the same veth again: on the wire twice, kept
    (40_000, 4, 0x0806, ARP),  # ARP on the bridge, then its copy on a veth
    (50_000, 3, 0x0806, ARP),
    (60_000, 4, 0x86DD, ipv6(64)),
    (70_000, 6, 0x86DD, ipv6(63)),
    (80_000, 5, 0x0800, ipv4(ident=9)),  # a new IPv4 ID: a new packet
    (200 * MS, 5, 0x0800, ipv4(64)),  # past the window: a new packet
]


def test_the_node_fold_and_the_cooked_capture_apply_one_rule() -> None:
    """The cluster's per-node fold (whole frames of any link type) and ``-i any`` on a node (the
    kernel's protocol and network bytes) must give the same verdicts for the same packets."""
    for linktype, wrap in ((1, lambda net, et, i: ethernet(net, et, mac=bytes([i]) * 6)),
                           (1, lambda net, et, i: ethernet(net, et, vlan=i)),
                           (276, sll2),
                           (101, lambda net, et, i: net)):
        cooked, fold = Dedup(50 * MS), NodeFold(window_ns=50 * MS)
        for ts, ifindex, etype, net in SCENARIO:
            frame = wrap(net, etype, ifindex)
            if linktype != 101 or etype != 0x0806:  # raw IP carries no ARP
                assert fingerprint(frame, linktype, len(frame)) == digest(etype, net, len(net))
                assert fold.admit(0, ts, frame, linktype, ifindex, len(frame)) == \
                    (not cooked.copy(digest(etype, net, len(net)), ifindex, ts)), (linktype, ts)
        assert fold.folded == cooked.removed == (3 if linktype != 101 else 2)


def test_a_frame_not_decoded_is_never_a_copy() -> None:
    assert fingerprint(b"\x00" * 10, 1) is None  # shorter than an Ethernet header
    assert fingerprint(b"\x12" * 60, 147) is None  # a link type kstap does not decode
    assert fingerprint(b"\x70" * 40, 101) is None  # raw, but neither IPv4 nor IPv6
