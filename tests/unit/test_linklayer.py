"""The one frame decoder: every link type and encapsulation finds the same IP packet, and the
kernel's sampling tail keys VXLAN/Geneve traffic by the inner header exactly as Python does."""

from __future__ import annotations

import os
import socket
import struct

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kstap import linklayer
from kstap.filters.bpf import Program, compile_filter, for_cooked_socket
from kstap.sampling.flowhash import flow_hash, splice, splice_threshold
from kstap.sampling.flowkey import flow_key


def inner_frame(v6: bool, proto: int, a: bytes, b: bytes, sport: int, dport: int) -> bytes:
    l4: object = (dpkt.tcp.TCP(sport=sport, dport=dport, data=b"abc") if proto == 6
                  else dpkt.udp.UDP(sport=sport, dport=dport, data=b"abc"))
    if v6:
        return eth(bytes(dpkt.ip6.IP6(src=a * 4, dst=b * 4, nxt=proto, hlim=64, data=l4)), 0x86DD)
    return eth(bytes(dpkt.ip.IP(src=a, dst=b, p=proto, data=l4)))


frames = st.builds(inner_frame, st.booleans(), st.sampled_from([6, 17]), st.binary(min_size=4, max_size=4),
                   st.binary(min_size=4, max_size=4), st.integers(0, 65535), st.integers(0, 65535))

IP4 = bytes(dpkt.ip.IP(src=b"\x0a\0\0\x01", dst=b"\x0a\0\0\x02", p=17,
                       data=dpkt.udp.UDP(sport=1234, dport=53, data=b"q")))


def eth(payload: bytes, etype: int = 0x0800) -> bytes:
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", etype) + payload


def udp4(payload: bytes, dport: int, *, sport: int = 50000, v6: bool = False) -> bytes:
    """An outer IPv4 (or IPv6) UDP datagram, as a node's tunnel device sends it."""
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = 8 + len(payload)
    if v6:
        return bytes(dpkt.ip6.IP6(src=b"\xfd" + b"\0" * 14 + b"\x01", dst=b"\xfd" + b"\0" * 14 + b"\x02",
                                  nxt=17, hlim=64, plen=len(bytes(u)), data=u))
    return bytes(dpkt.ip.IP(src=b"\xc0\xa8\0\x01", dst=b"\xc0\xa8\0\x02", p=17, data=u))


def vxlan(inner_frame: bytes, port: int = 4789, v6: bool = False) -> bytes:
    return eth(udp4(struct.pack("!BxxxI", 0x08, 42 << 8) + inner_frame, port, v6=v6), 0x86DD if v6 else 0x0800)


def geneve(inner: bytes, proto: int, options: int = 0) -> bytes:
    head = struct.pack("!BBHI", options, 0, proto, 42 << 8) + b"\0" * (4 * options)
    return eth(udp4(head + inner, 6081))


CASES = {
    "ethernet": (1, eth(IP4)),
    "vlan": (1, eth(struct.pack("!HH", 10, 0x0800) + IP4, 0x8100)),
    "qinq": (1, eth(struct.pack("!HHHH", 20, 0x8100, 10, 0x0800) + IP4, 0x88A8)),
    "sll": (113, struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 6, 0x0800) + IP4),
    "sll-vlan": (113, struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 6, 0x8100) + struct.pack("!HH", 5, 0x0800) + IP4),
    "sll2": (276, struct.pack("!HHIHBB8s", 0x0800, 0, 3, 1, 4, 6, b"\x02" * 6) + IP4),
    "null": (0, struct.pack("<I", 2) + IP4),
    "null-be": (0, struct.pack(">I", 2) + IP4),
    "loop": (108, struct.pack(">I", 2) + IP4),
    "raw": (101, IP4),
    "dlt-raw": (12, IP4),
    "ipv4": (228, IP4),
    "nflog": (239, struct.pack("!BBH", 2, 0, 1) + struct.pack("<HH", 8, 1) + b"\x08\0\0\x03"
              + struct.pack("<HH", 4 + len(IP4), 9) + IP4 + b"\0" * (-len(IP4) % 4)),
    "vxlan": (1, vxlan(eth(IP4))),
    "vxlan-8472": (1, vxlan(eth(IP4), 8472)),
    "vxlan-over-ipv6": (1, vxlan(eth(IP4), v6=True)),
    "vxlan-inner-vlan": (1, vxlan(eth(struct.pack("!HH", 10, 0x0800) + IP4, 0x8100))),
    "geneve-eth": (1, geneve(eth(IP4), 0x6558, options=2)),
    "geneve-ip": (1, geneve(IP4, 0x0800)),
    "sll2-vxlan": (276, struct.pack("!HHIHBB8s", 0x0800, 0, 3, 1, 0, 6, b"\x02" * 6) + udp4(
        struct.pack("!BxxxI", 0x08, 7 << 8) + eth(IP4), 4789)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_link_type_finds_the_same_ip_packet(name: str) -> None:
    linktype, frame = CASES[name]
    etype, off = linklayer.network(frame, linktype)
    assert etype == 0x0800
    assert frame[off : off + len(IP4)] == IP4
    assert flow_key(frame, linktype) == flow_key(eth(IP4))


def test_what_is_not_decoded_has_no_flow() -> None:
    assert linklayer.network(b"\0" * 40, 147) == (0, 0)  # a DLT_USER link type
    assert linklayer.network(b"\x02" * 10, 1) == (0, 0)  # truncated
    assert flow_key(eth(b"\0" * 28, 0x0806)) is None  # ARP
    bad_vxlan = vxlan(eth(IP4))
    no_i_flag = bad_vxlan[:42] + b"\0" + bad_vxlan[43:]
    assert flow_key(no_i_flag) != flow_key(eth(IP4))  # not a VXLAN header: keyed by the outer datagram
    assert linklayer.network(vxlan(eth(IP4)), 1, tunnels=False)[1] == 14


def tail(seed: int, rate: float) -> tuple[Program, int]:
    sampled = splice(compile_filter("").insns, seed, rate)
    return Program("", 1, 262144, sampled.insns), sampled.threshold


@settings(max_examples=300, deadline=None)
@given(frames, st.integers(0, 2**32 - 1), st.floats(0.01, 0.99),
       st.sampled_from(["vxlan", "vxlan6", "geneve-eth", "geneve-ip"]), st.integers(1024, 65535))
def test_bpf_tail_keys_tunnels_by_the_inner_header(raw: bytes, seed: int, rate: float, kind: str,
                                                   sport: int) -> None:
    """libpcap's BPF interpreter runs the spliced program on encapsulated frames: it decides by
    the inner flow (the outer source port varies per flow and must not matter)."""
    if kind == "vxlan":
        outer = vxlan(raw)
    elif kind == "vxlan6":
        outer = vxlan(raw, v6=True)
    elif kind == "geneve-eth":
        outer = geneve(raw, 0x6558, options=sport % 3)
    else:
        etype, off = linklayer.network(raw, 1)
        outer = geneve(raw[off:], etype)
    prog, thresh = tail(seed, rate)
    inner = flow_key(raw)
    assert inner is not None and flow_key(outer) == inner
    assert prog.matches(outer, len(outer)) == (flow_hash(inner, seed) < thresh)


@pytest.mark.skipif(os.geteuid() != 0, reason="a packet socket needs CAP_NET_RAW")
@pytest.mark.parametrize("cooked", [False, True])
def test_the_kernel_accepts_the_sampling_tail(cooked: bool) -> None:
    """The kernel's checker is stricter than libpcap's interpreter (every scratch slot written first
    on every path, a ret not ending one): attach both forms to a real socket."""
    base = for_cooked_socket(compile_filter("udp", linktype=276)) if cooked else compile_filter("udp")
    prog = base.with_insns(splice_threshold(base.insns, 0x1234, 1 << 30, cooked=cooked).insns)
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM if cooked else socket.SOCK_RAW, 0) as s:
        fprog, keep = prog.sock_fprog()
        s.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER; raises EINVAL if refused
        del keep


_ETH_IPV4 = b"\x02" * 12 + b"\x08\x00"


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=80) | st.binary(min_size=20, max_size=80).map(lambda b: _ETH_IPV4 + b),
       st.sampled_from([6, 17, 1]), st.booleans())
def test_the_ethernet_ipv4_shortcut_decides_as_the_full_path(frame: bytes, proto: int, tunnels: bool) -> None:
    if len(frame) > 23 and frame[:14] == _ETH_IPV4:
        frame = frame[:23] + bytes([proto]) + frame[24:]
    got = linklayer.network(frame, linklayer.LINKTYPE_ETHERNET, tunnels=tunnels)
    assert got == linklayer._network(frame, linklayer.LINKTYPE_ETHERNET, tunnels)
