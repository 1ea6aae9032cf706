"""Interface lookup: existence, link type, a helpful list when a name is wrong."""

from __future__ import annotations

import socket

from kstap.errors import UsageError

ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE
LINKTYPE_BY_ARPHRD = {ARPHRD_ETHER: 1, ARPHRD_LOOPBACK: 1, ARPHRD_NONE: 101}
"""ARPHRD_* → pcap LINKTYPE_* for the link types a raw packet socket delivers as-is."""


def available() -> list[str]:
    """Interface names in the current network namespace."""
    return [name for _, name in socket.if_nameindex()]


def require(name: str) -> int:
    """The ifindex of ``name``, or a usage error that lists what exists."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        names = ", ".join(available()) or "none"
        raise UsageError(f"no such interface: {name!r}", hint=f"available interfaces: {names}") from None


def is_loopback(hatype: int) -> bool:
    return hatype == ARPHRD_LOOPBACK


IFF_UP = 0x1
SIOCGIFFLAGS = 0x8913


def is_up(name: str) -> bool:
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16sH14x", name.encode()[:15], 0))
        except OSError:
            return False
    return bool(struct.unpack("16sH14x", raw)[1] & IFF_UP)


def expand(names: list[str]) -> list[str]:
    """``any`` → every interface that is up, except loopback (what a node worker captures).

    Unlike libpcap's cooked ``any`` device this opens one ring per interface, so frames keep their
    link-layer headers; a packet that crosses a veth and a bridge is seen on both, as with
    ``tcpdump -i any``.
    """
    if "any" not in names:
        return names
    found = [n for n in available() if n != "lo" and is_up(n)]
    rest = [n for n in names if n != "any" and n not in found]
    if not found and not rest:
        raise UsageError("-i any: no interface is up here", hint="list them with 'ip link'")
    return found + rest
