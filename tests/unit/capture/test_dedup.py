"""The -i any dedup rule: the same network bytes on another interface within the window is a copy."""

from __future__ import annotations

import dpkt

from kstap.capture.dedup import Dedup, digest

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
