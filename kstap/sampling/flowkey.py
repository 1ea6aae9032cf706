"""The flow a frame belongs to, direction-free, read the same way the BPF tail reads it.

Rules (documented in docs/sampling.md, pinned by golden vectors):

- The link layer is decoded by :mod:`kstap.linklayer` (Ethernet with up to two VLAN tags, Linux
  cooked v1/v2, BSD loopback, raw IP, NFLOG); VXLAN and Geneve datagrams are keyed by their
  *inner* header, so overlay traffic belongs to the pods' flow, not the nodes' tunnel. A datagram to a
  tunnel port whose payload is not a valid, whole tunnel header is plain UDP (what counts as a
  tunnel: :func:`kstap.linklayer._tunnel`, docs/sampling.md).
- IPv4: addresses; ports for TCP (6), UDP (17), SCTP (132) when the packet is not a fragment.
  Fragments (MF set or offset > 0) and other protocols use ports 0, so every fragment of a
  datagram lands in the same flow (keyed by the address pair and protocol).
- IPv6: addresses from the fixed header; ports when the *first* next-header is TCP/UDP/SCTP
  (extension headers are not walked: such packets are keyed by address pair and next header).
- ICMP and ICMPv6 are keyed by address pair and protocol: an echo request and its reply have
  different types, and a session must not be split by them.
- Frames without an IP flow (ARP, LLDP, an undecoded link type, a truncated header) have no
  flow: they are always kept and counted as ``unkeyed`` (see :data:`NON_IP`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kstap.linklayer import ETH_IPV4, ETH_IPV6, VLAN_TPIDS, network

__all__ = ["ETH_IPV4", "ETH_IPV6", "NON_IP", "VLAN_TPIDS", "FlowKey", "KeyTuple", "flow_key", "key_tuple"]
PORT_PROTOCOLS = (6, 17, 132)


@dataclass(frozen=True, order=True)
class FlowKey:
    """One direction-free flow: endpoint A is the numerically smaller (address, port)."""

    proto: int
    a_addr: bytes
    a_port: int
    b_addr: bytes
    b_port: int

    @property
    def family(self) -> int:
        return 4 if len(self.a_addr) == 4 else 6

    def __str__(self) -> str:
        import ipaddress

        a = ipaddress.ip_address(self.a_addr)
        b = ipaddress.ip_address(self.b_addr)
        if self.family == 6:
            ends = f"[{a}]:{self.a_port} <-> [{b}]:{self.b_port}"
        else:
            ends = f"{a}:{self.a_port} <-> {b}:{self.b_port}"
        return f"{_PROTO_NAMES.get(self.proto, self.proto)} {ends}"


_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmp6"}
NON_IP = None
"""What :func:`flow_key` returns for frames that are not IP: they belong to no flow."""


KeyTuple = tuple[int, bytes, int, bytes, int]
"""A FlowKey's fields as a plain tuple: what the per-packet hot loop hashes and compares."""


def flow_key(frame: bytes, linktype: int = 1) -> FlowKey | None:
    """The flow of a frame of any link type :mod:`kstap.linklayer` decodes (the inner header of a
    VXLAN/Geneve datagram); None for non-IP, truncated or undecoded frames."""
    t = key_tuple(frame, linktype)
    return None if t is None else FlowKey(*t)


def key_tuple(frame: bytes, linktype: int = 1) -> KeyTuple | None:
    """:func:`flow_key` as a tuple (cheaper to build, hash and compare)."""
    etype, off = network(frame, linktype)
    if etype == ETH_IPV4:
        if len(frame) < off + 20:
            return None
        ihl = (frame[off] & 0x0F) * 4
        proto = frame[off + 9]
        frag = struct.unpack_from("!H", frame, off + 6)[0] & 0x3FFF
        src, dst = frame[off + 12 : off + 16], frame[off + 16 : off + 20]
        l4 = off + ihl
    elif etype == ETH_IPV6:
        if len(frame) < off + 40:
            return None
        proto = frame[off + 6]
        frag = 0
        src, dst = frame[off + 8 : off + 24], frame[off + 24 : off + 40]
        l4 = off + 40
    else:
        return NON_IP
    sport = dport = 0
    if proto in PORT_PROTOCOLS and not frag and len(frame) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", frame, l4)
    if (src, sport) <= (dst, dport):
        return (proto, src, sport, dst, dport)
    return (proto, dst, dport, src, sport)


def opens_tcp(frame: bytes, linktype: int = 1) -> bool:
    """True for a TCP segment with SYN set and ACK clear: the first packet of a connection."""
    off = 0
    if linktype == 1:
        off = 14
        etype = struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else 0
        for _ in range(2):
            if etype in VLAN_TPIDS and len(frame) >= off + 4:
                etype = struct.unpack_from("!H", frame, off + 2)[0]
                off += 4
    elif linktype == 101 and frame:
        etype = ETH_IPV4 if frame[0] >> 4 == 4 else ETH_IPV6 if frame[0] >> 4 == 6 else 0
    else:
        return False
    if etype == ETH_IPV4 and len(frame) >= off + 20 and frame[off + 9] == 6:
        l4 = off + (frame[off] & 0x0F) * 4
    elif etype == ETH_IPV6 and len(frame) >= off + 40 and frame[off + 6] == 6:
        l4 = off + 40
    else:
        return False
    return len(frame) >= l4 + 14 and frame[l4 + 13] & 0x12 == 0x02
