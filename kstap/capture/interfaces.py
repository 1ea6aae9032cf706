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
