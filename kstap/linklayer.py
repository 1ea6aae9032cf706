"""The one frame decoder: link type and encapsulations → where the (innermost) IP header starts.

Every stage that looks into a frame (the flow key of sampling, dissection, the `-i any` dedup)
asks this module, so a capture of any link type kstap can produce or read is keyed and
dissected the same way as plain Ethernet:

- Ethernet (1), then up to two VLAN tags (802.1Q 0x8100, 802.1ad 0x88a8: QinQ).
- Linux cooked v1 (113, 16-byte header, protocol at 14) and v2 (276, 20 bytes, protocol at 0);
  a VLAN tag put back after the cooked header is skipped like an Ethernet one.
- BSD loopback: NULL (0, address family in the writer's byte order) and LOOP (108, network order).
- Raw IP: 101, DLT_RAW 12 and 14, IPV4 (228), IPV6 (229): the version nibble decides.
- NFLOG (239): the NFULA_PAYLOAD TLV holds the IP packet; the header names the family.
- VXLAN (UDP port 4789, or 8472, Linux's and flannel's default) and Geneve (UDP 6081) are
  followed into their inner frame, so overlay traffic is keyed by the pods' own addresses; a
  datagram to those ports whose payload is not a valid, whole tunnel header is plain UDP
  (see :func:`_tunnel`).
  Up to :data:`MAX_TUNNELS` nested encapsulations are followed; an outer IPv4 fragment is not
  (its payload is not a whole tunnel header).

What is *not* decoded (an unknown link type, a truncated header) comes back as ethertype 0.
"""

from __future__ import annotations

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_NFLOG = 239
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
RAW_LINKTYPES = frozenset({LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6})
SUPPORTED = frozenset({LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL,
                       LINKTYPE_NFLOG, LINKTYPE_LINUX_SLL2}) | RAW_LINKTYPES
"""Link types whose frames this module decodes."""

SLL_HEADER = 16
SLL2_HEADER = 20
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_TRANSPARENT = 0x6558
"""Transparent Ethernet bridging: what Geneve (and GRE) call an inner Ethernet frame."""
VLAN_TPIDS = (0x8100, 0x88A8)
VXLAN_PORTS = (4789, 8472)
GENEVE_PORT = 6081
MAX_TUNNELS = 2
NFULA_PAYLOAD = 9
_BSD_INET6 = (10, 24, 28, 30)
"""AF_INET6 on Linux, NetBSD/OpenBSD, FreeBSD, Darwin (what NULL/LOOP headers may carry)."""

Located = tuple[int, int]
"""(ethertype, offset of the network header); ethertype 0 when the frame is not decoded."""


def network(frame: bytes, linktype: int = LINKTYPE_ETHERNET, *, tunnels: bool = True) -> Located:
    """Where the innermost network header of ``frame`` starts, and its ethertype.

    With ``tunnels`` (the default), VXLAN and Geneve are followed to the inner packet.
    """
    if linktype == LINKTYPE_ETHERNET and len(frame) >= 34 and frame[12] == 8 and frame[13] == 0 and frame[23] != 17:
        return ETH_IPV4, 14  # the common case, decided at once: untagged Ethernet, IPv4, not UDP (no tunnel)
    return _network(frame, linktype, tunnels)


def _network(frame: bytes, linktype: int, tunnels: bool) -> Located:
    """:func:`network` without its shortcut for the common case (which decides the same, sooner)."""
    etype, off = outer(frame, linktype)
    for _ in range(MAX_TUNNELS if tunnels else 0):
        if etype != ETH_IPV4 and etype != ETH_IPV6:
            break  # an inner frame that is not IP (ARP, STP) is no datagram to follow
        inner = _tunnel(frame, etype, off)
        if inner is None:
            break
        etype, off = inner
    return etype, off


def outer(frame: bytes, linktype: int) -> Located:
    """The first network header after the link layer (no tunnel is followed)."""
    n = len(frame)
    if linktype == LINKTYPE_ETHERNET:
        return _ethernet(frame, 0)
    if linktype == LINKTYPE_LINUX_SLL2:
        if n < SLL2_HEADER:
            return 0, 0
        return _vlans(frame, (frame[0] << 8) | frame[1], SLL2_HEADER)
    if linktype == LINKTYPE_LINUX_SLL:
        if n < SLL_HEADER:
            return 0, 0
        return _vlans(frame, (frame[14] << 8) | frame[15], SLL_HEADER)
    if linktype in RAW_LINKTYPES:
        return _ip_version(frame, 0), 0
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if n < 4:
            return 0, 0
        fam = int.from_bytes(frame[:4], "big" if linktype == LINKTYPE_LOOP else "little")
        if linktype == LINKTYPE_NULL and fam > 0xFFFF:  # written on a big-endian host
            fam = int.from_bytes(frame[:4], "big")
        return (ETH_IPV4 if fam == 2 else ETH_IPV6 if fam in _BSD_INET6 else 0), 4
    if linktype == LINKTYPE_NFLOG:
        return _nflog(frame)
    return 0, 0


def _ethernet(frame: bytes, start: int) -> Located:
    if len(frame) < start + 14:
        return 0, 0
    return _vlans(frame, (frame[start + 12] << 8) | frame[start + 13], start + 14)


def _vlans(frame: bytes, etype: int, off: int) -> Located:
    """Skip up to two VLAN tags (TCI + inner ethertype each) starting at ``off``."""
    for _ in range(2):
        if etype != 0x8100 and etype != 0x88A8:
            break
        if len(frame) < off + 4:
            return 0, 0
        etype = (frame[off + 2] << 8) | frame[off + 3]
        off += 4
    return etype, off


def _ip_version(frame: bytes, off: int) -> int:
    if len(frame) <= off:
        return 0
    v = frame[off] >> 4
    return ETH_IPV4 if v == 4 else ETH_IPV6 if v == 6 else 0


def _nflog(frame: bytes) -> Located:
    n = len(frame)
    if n < 4:
        return 0, 0
    etype = ETH_IPV4 if frame[0] == 2 else ETH_IPV6 if frame[0] == 10 else 0
    off = 4
    while off + 4 <= n:
        length = frame[off] | (frame[off + 1] << 8)  # TLV lengths are in the writer's (little-endian) order
        kind = (frame[off + 2] | (frame[off + 3] << 8)) & 0x7FFF
        if length < 4:
            return 0, 0
        if kind == NFULA_PAYLOAD:
            return (etype or _ip_version(frame, off + 4)), off + 4
        off += (length + 3) & ~3
    return 0, 0


def _tunnel(frame: bytes, etype: int, off: int) -> Located | None:
    """The frame inside a VXLAN or Geneve datagram at network offset ``off``, or None.

    A datagram counts as a tunnel when its UDP destination port is a tunnel port *and* its
    header is one kstap reads, whole: VXLAN with the I flag and a whole inner Ethernet header
    (VLAN tags included); Geneve version 0 whose options end inside the packet, carrying Ethernet
    (0x6558, whole header) or IPv4/IPv6 (at least one byte). Anything else on those ports (too
    short, another flag or version, another protocol type) is a plain UDP datagram, keyed by its
    outer header, as tcpdump and Wireshark show it. The kernel's sampling tail
    (:func:`kstap.sampling.flowhash.sampling_tail`) applies the same rule, test for test.
    """
    n = len(frame)
    if etype == ETH_IPV4:
        if n < off + 20 or frame[off + 9] != 17 or ((frame[off + 6] & 0x3F) << 8) | frame[off + 7]:
            return None
        l4 = off + (frame[off] & 0x0F) * 4
    else:
        if n < off + 40 or frame[off + 6] != 17:
            return None
        l4 = off + 40
    if n < l4 + 8:
        return None
    dport = (frame[l4 + 2] << 8) | frame[l4 + 3]
    body = l4 + 8
    if dport in VXLAN_PORTS:
        if n < body + 8 + 14 or not frame[body] & 0x08:  # the I flag: a valid VNI follows
            return None
        inner = _ethernet(frame, body + 8)
        return inner if inner[1] else None  # offset 0: a truncated Ethernet or VLAN header
    if dport == GENEVE_PORT:
        if n < body + 8 or frame[body] >> 6 != 0:  # version 0 only
            return None
        start = body + 8 + (frame[body] & 0x3F) * 4
        proto = (frame[body + 2] << 8) | frame[body + 3]
        if proto == ETH_TRANSPARENT:
            inner = _ethernet(frame, start)
            return inner if inner[1] else None
        if proto in (ETH_IPV4, ETH_IPV6) and n > start:
            return proto, start
    return None
