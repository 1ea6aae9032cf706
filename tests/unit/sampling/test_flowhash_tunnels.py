"""What counts as a tunnel: the kernel's sampling tail and the Python flow key agree on every edge.

Each case is one frame and the header Python keys it by (``inner``: the VXLAN/Geneve inner packet,
``outer``: the datagram itself, as tcpdump and Wireshark show a UDP datagram that merely uses a
tunnel port, ``none``: no flow, always kept). The spliced program is run by libpcap's interpreter
on the Ethernet frame, and as a cooked (``-i any``) socket's filter on its network header, with
two thresholds around the flow's hash: the flow must be kept at ``hash + 1`` and dropped at
``hash``, so a program that keyed any other header (or no flow at all) fails one of the two.
``tests/privileged/test_flowhash_tunnels_kernel.py`` runs the same cases in the kernel.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kstap import linklayer
from kstap.filters.bpf import Program, compile_filter
from kstap.sampling.flowhash import (
    FULL,
    LD_IMM,
    LD_W_ABS,
    SKF_AD_PROTOCOL,
    flow_hash,
    sampling_tail,
    splice,
    splice_threshold,
)
from kstap.sampling.flowkey import FlowKey, flow_key

SEED = 0x7E57
SNAP = 262144
OUTER = ("10.213.94.1", "10.213.94.2")
"""The outer addresses: the privileged test's lab veth pair (``Lab(subnet=94)``)."""
SPORT = 50000


def key(proto: int, a: str, ap: int, b: str, bp: int) -> FlowKey:
    ends = sorted([(ipaddress.ip_address(a).packed, ap), (ipaddress.ip_address(b).packed, bp)])
    return FlowKey(proto, *ends[0], *ends[1])


def eth(payload: bytes, etype: int = 0x0800) -> bytes:
    return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + struct.pack("!H", etype) + payload


def ip4(l4: object, proto: int = 17, src: str = "10.0.0.1", dst: str = "10.0.0.2", **kw: object) -> bytes:
    return bytes(dpkt.ip.IP(src=ipaddress.ip_address(src).packed, dst=ipaddress.ip_address(dst).packed, p=proto,
                            data=l4, **kw))


def udp(payload: bytes, sport: int, dport: int) -> dpkt.udp.UDP:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = 8 + len(payload)
    return u


INNER_IP4 = ip4(udp(b"query", 1234, 53))
INNER_IP6 = bytes(dpkt.ip6.IP6(src=ipaddress.ip_address("fd00::1").packed, dst=ipaddress.ip_address("fd00::2").packed,
                               nxt=6, hlim=64, data=dpkt.tcp.TCP(sport=40000, dport=443, data=b"hello")))
INNER = key(17, "10.0.0.1", 1234, "10.0.0.2", 53)
INNER6 = key(6, "fd00::1", 40000, "fd00::2", 443)


def outer_udp(payload: bytes, dport: int, *, v6: bool = False, **ip: object) -> bytes:
    """An outer UDP datagram between the lab's addresses (IPv6: their ::ffff: forms)."""
    if v6:
        src, dst = (ipaddress.ip_address(f"::ffff:{a}").packed for a in OUTER)
        return eth(bytes(dpkt.ip6.IP6(src=src, dst=dst, nxt=17, hlim=64, data=udp(payload, SPORT, dport))), 0x86DD)
    return eth(ip4(udp(payload, SPORT, dport), src=OUTER[0], dst=OUTER[1], **ip))


def outer_key(dport: int, *, v6: bool = False, ports: bool = True) -> FlowKey:
    a, b = (f"::ffff:{x}" for x in OUTER) if v6 else OUTER
    return key(17, a, SPORT if ports else 0, b, dport if ports else 0)


def vxlan_header(flags: int = 0x08, vni: int = 42) -> bytes:
    return struct.pack("!BxxxI", flags, vni << 8)


def geneve_header(proto: int, options: int = 0, version: int = 0) -> bytes:
    return struct.pack("!BBHI", version << 6 | options, 0, proto, 42 << 8) + b"\0" * (4 * options)


def vxlan(inner: bytes, port: int = 4789, **kw: object) -> bytes:
    return outer_udp(vxlan_header() + inner, port, **kw)  # type: ignore[arg-type]


def cases() -> Iterator[tuple[str, bytes, FlowKey | None]]:
    """(name, Ethernet frame, the flow Python must key it by; None: no flow, kept)."""
    inner_eth = eth(INNER_IP4)
    # the defect: a datagram that merely uses a tunnel port is plain UDP
    yield "udp-6081-not-geneve", outer_udp(b"abc", 6081), outer_key(6081)
    yield "udp-6081-7-bytes", outer_udp(b"\0" * 7, 6081), outer_key(6081)
    yield "udp-4789-short", outer_udp(vxlan_header() + inner_eth[:13], 4789), outer_key(4789)
    yield "udp-8472-short", outer_udp(vxlan_header() + inner_eth[:13], 8472), outer_key(8472)
    yield "udp-4789-empty", outer_udp(b"", 4789), outer_key(4789)
    yield "udp-4789-over-ipv6-short", outer_udp(b"abc", 4789, v6=True), outer_key(4789, v6=True)
    yield "tcp-4789", eth(ip4(dpkt.tcp.TCP(sport=SPORT, dport=4789, data=vxlan_header() + inner_eth), 6,
                              OUTER[0], OUTER[1])), key(6, OUTER[0], SPORT, OUTER[1], 4789)
    yield "udp-from-4789", eth(ip4(udp(vxlan_header() + inner_eth, 4789, SPORT), src=OUTER[0], dst=OUTER[1])), \
        key(17, OUTER[0], 4789, OUTER[1], SPORT)
    yield "outer-fragment", eth(ip4(udp(vxlan_header() + inner_eth, SPORT, 4789), src=OUTER[0], dst=OUTER[1],
                                    mf=1)), outer_key(4789, ports=False)
    # VXLAN flags: the I bit (a valid VNI) decides; other bits (GBP's G) do not matter
    yield "vxlan", vxlan(inner_eth), INNER
    yield "vxlan-8472", vxlan(inner_eth, 8472), INNER
    yield "vxlan-over-ipv6", vxlan(inner_eth, v6=True), INNER
    yield "vxlan-no-i-flag", outer_udp(vxlan_header(0x00) + inner_eth, 4789), outer_key(4789)
    yield "vxlan-other-flags-only", outer_udp(vxlan_header(0xF7) + inner_eth, 4789), outer_key(4789)
    yield "vxlan-gbp-and-i", outer_udp(vxlan_header(0x88) + inner_eth, 4789), INNER
    yield "vxlan-outer-ip-options", eth(ip4(udp(vxlan_header() + inner_eth, SPORT, 4789), src=OUTER[0],
                                            dst=OUTER[1], opts=b"\x01" * 8, hl=7)), INNER
    # inner frames that are not IPv4/IPv6: the tunnel is valid, the frame has no flow (like ARP outside)
    yield "vxlan-inner-arp", vxlan(eth(b"\0\1\x08\0\6\4\0\1" + b"\0" * 20, 0x0806)), None
    yield "vxlan-inner-ethertype-0", vxlan(eth(b"\0" * 30, 0x0000)), None
    yield "vxlan-inner-ipv6", vxlan(eth(INNER_IP6, 0x86DD)), INNER6
    yield "vxlan-inner-qinq", vxlan(eth(struct.pack("!HHHH", 20, 0x8100, 10, 0x0800) + INNER_IP4, 0x88A8)), INNER
    yield "vxlan-inner-vlan-cut", vxlan(eth(b"\0\x0a", 0x8100)), outer_key(4789)
    yield "vxlan-inner-ip-cut", vxlan(eth(INNER_IP4[:12])), None
    yield "vxlan-inner-header-only", vxlan(eth(b"")), None
    yield "vxlan-inner-ports-cut", vxlan(eth(INNER_IP4[:22])), key(17, "10.0.0.1", 0, "10.0.0.2", 0)
    # Geneve: version 0, options inside the packet, protocol Ethernet / IPv4 / IPv6
    yield "geneve-eth", outer_udp(geneve_header(0x6558, 2) + inner_eth, 6081), INNER
    yield "geneve-ipv4", outer_udp(geneve_header(0x0800) + INNER_IP4, 6081), INNER
    yield "geneve-ipv6", outer_udp(geneve_header(0x86DD, 1) + INNER_IP6, 6081), INNER6
    yield "geneve-version-1", outer_udp(geneve_header(0x0800, version=1) + INNER_IP4, 6081), outer_key(6081)
    yield "geneve-options-past-end", outer_udp(struct.pack("!BBHI", 63, 0, 0x0800, 0) + INNER_IP4, 6081), \
        outer_key(6081)
    yield "geneve-options-to-the-end", outer_udp(geneve_header(0x0800, 3), 6081), outer_key(6081)
    yield "geneve-mpls", outer_udp(geneve_header(0x8847) + b"\0\0\1\xff" + INNER_IP4, 6081), outer_key(6081)
    yield "geneve-eth-cut", outer_udp(geneve_header(0x6558) + inner_eth[:13], 6081), outer_key(6081)
    yield "geneve-ipv4-cut", outer_udp(geneve_header(0x0800) + INNER_IP4[:5], 6081), None
    # nested tunnels: up to two are followed (linklayer.MAX_TUNNELS), the third is plain UDP
    level2 = ip4(udp(vxlan_header() + inner_eth, 40001, 4789), src="10.1.0.1", dst="10.1.0.2")
    yield "vxlan-in-geneve", outer_udp(geneve_header(0x0800) + level2, 6081), INNER
    level3 = ip4(udp(vxlan_header() + eth(level2), 40002, 8472), src="10.2.0.1", dst="10.2.0.2")
    yield "three-tunnels", outer_udp(geneve_header(0x0800) + level3, 6081), key(17, "10.1.0.1", 40001, "10.1.0.2",
                                                                                4789)
    # truncated outer headers: no flow (a load past the end must not drop them in the kernel)
    yield "ethernet-cut", eth(b"")[:10], None
    yield "vlan-tag-cut", eth(b"\0\x0a", 0x8100), None
    yield "ipv4-cut", eth(INNER_IP4[:19]), None
    yield "ipv6-cut", eth(INNER_IP6[:39], 0x86DD), None
    yield "ipv4-ports-cut", eth(INNER_IP4[:23]), key(17, "10.0.0.1", 0, "10.0.0.2", 0)
    yield "ipv6-ports-cut", eth(INNER_IP6[:43], 0x86DD), key(6, "fd00::1", 0, "fd00::2", 0)
    yield "ipv4-bad-ihl", eth(b"\x4f" + INNER_IP4[1:]), key(17, "10.0.0.1", 0, "10.0.0.2", 0)


CASES = {name: (frame, flow) for name, frame, flow in cases()}


def thresholds(flow: FlowKey | None) -> list[tuple[int, bool]]:
    """(threshold, kept?) pairs that tell the expected flow from every other (and from none)."""
    if flow is None:
        return [(0, True)]
    h = flow_hash(flow, SEED)
    return [(h, False), (h + 1, True)] if h + 1 < FULL else [(h, False)]


def cooked_view(frame: bytes) -> tuple[int, bytes] | None:
    """What a cooked socket's filter sees of an Ethernet frame: (skb protocol, network header on)."""
    if len(frame) < 14 or frame[12:14] in (b"\x81\x00", b"\x88\xa8"):
        return None  # the kernel never hands a cooked socket these (it takes the outer tag off)
    return struct.unpack("!H", frame[12:14])[0], frame[14:]


def sll2(etype: int, packet: bytes) -> bytes:
    """The frame kstap writes for a cooked packet (LINKTYPE_LINUX_SLL2)."""
    return struct.pack("!HHIHBB8s", etype, 0, 3, 1, 0, 6, b"\x02" * 6 + b"\0\0") + packet


def run_cooked(insns: tuple[tuple[int, int, int, int], ...], etype: int, packet: bytes) -> bool:
    """libpcap's interpreter has no skb: the tail's ancillary protocol load becomes that constant."""
    swapped = tuple((LD_IMM, 0, 0, etype) if (code, k) == (LD_W_ABS, SKF_AD_PROTOCOL) else (code, jt, jf, k)
                    for code, jt, jf, k in insns)
    return Program("", 276, SNAP, swapped).matches(packet, len(packet))


@pytest.mark.parametrize("name", sorted(CASES))
def test_python_keys_each_case_by_the_documented_header(name: str) -> None:
    frame, flow = CASES[name]
    assert flow_key(frame) == flow
    view = cooked_view(frame)
    if view is not None:
        assert flow_key(sll2(*view), linklayer.LINKTYPE_LINUX_SLL2) == flow


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_bpf_tail_decides_each_case_like_python(name: str) -> None:
    frame, flow = CASES[name]
    user = compile_filter("").insns
    view = cooked_view(frame)
    for thresh, kept in thresholds(flow):
        prog = Program("", 1, SNAP, splice_threshold(user, SEED, thresh).insns)
        assert prog.matches(frame, len(frame)) is kept, (thresh, kept)
        if view is not None:
            assert run_cooked(splice_threshold(user, SEED, thresh, cooked=True).insns, *view) is kept, "cooked"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(CASES)), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
       st.integers(0, 300), st.integers(0, 2**32 - 1), st.floats(0.01, 0.99))
def test_mutated_tunnel_frames_are_decided_like_python(name: str, edits: list[tuple[int, int]], cut: int,
                                                       seed: int, rate: float) -> None:
    """Any byte of a case changed, the frame cut anywhere: the tail still decides as Python does."""
    frame = bytearray(CASES[name][0])
    for at, value in edits:
        if at < len(frame):
            frame[at] = value
    raw = bytes(frame[: len(frame) - cut % (len(frame) + 1)])
    sampled = splice(compile_filter("").insns, seed, rate)
    flow = flow_key(raw)
    python = flow is None or flow_hash(flow, seed) < sampled.threshold
    assert Program("", 1, SNAP, sampled.insns).matches(raw, len(raw)) is python


def test_the_thresholds_tell_the_other_headers_apart() -> None:
    """The cases above fail a tail that keys the outer header where Python keys the inner (and back)."""
    inner, outer = CASES["vxlan"][1], outer_key(4789)
    assert inner is not None
    assert any((flow_hash(outer, SEED) < thresh) != kept for thresh, kept in thresholds(inner))
    assert any((flow_hash(inner, SEED) < thresh) != kept for thresh, kept in thresholds(outer))
    assert any(not kept for _, kept in thresholds(inner))  # and from "no flow, kept"


@pytest.mark.parametrize("cooked", [False, True])
def test_the_tail_stays_far_below_the_kernel_limit(cooked: bool) -> None:
    """Three decode levels and one hash: 567 instructions (641 for two levels and two hashes before)."""
    assert len(sampling_tail(SEED, 1 << 31, SNAP, cooked=cooked)) < 600
