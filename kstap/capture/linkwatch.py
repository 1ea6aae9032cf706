"""Interfaces that appear and vanish, from rtnetlink (RTM_NEWLINK / RTM_DELLINK), as they happen.

A node's pods come and go with their host-side veths; the ``-i any`` capture never stops for
that, but it says so: each change becomes an :class:`~kstap.model.InterfaceEvent`. The socket
joins the RTMGRP_LINK multicast group of the namespace it is opened in, so open it inside the
capture's namespace. When the kernel could not queue a notice (ENOBUFS after a burst), the list
is read again and compared.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time

from kstap.model import InterfaceEvent, LinkChange

RTMGRP_LINK = 1
RTM_NEWLINK = 16
RTM_DELLINK = 17
IFLA_IFNAME = 3
_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_RTA = struct.Struct("=HH")


class LinkWatch:
    """Knows every interface's name by index and reports the changes since the last call."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_LINK))
        self.names: dict[int, str] = {i: n for i, n in socket.if_nameindex()}
        self.gone: dict[int, str] = {}
        """Interfaces that vanished during the capture (index → name), so late packets still have a name."""

    def fileno(self) -> int:
        return self.sock.fileno()

    def name(self, ifindex: int) -> str:
        return self.names.get(ifindex) or self.gone.get(ifindex) or f"if{ifindex}"

    def changes(self) -> list[InterfaceEvent]:
        """What appeared or vanished since the last call (reads every queued notice)."""
        out: list[InterfaceEvent] = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # notices were lost: compare with the list
                    out.extend(self._resync())
                    continue
                raise
            out.extend(self._parse(data))
        return out

    def _parse(self, data: bytes) -> list[InterfaceEvent]:
        out: list[InterfaceEvent] = []
        off = 0
        now = time.time_ns()
        while off + _NLMSG.size <= len(data):
            length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
            if length < _NLMSG.size:
                break
            if kind in (RTM_NEWLINK, RTM_DELLINK) and length >= _NLMSG.size + _IFINFO.size:
                _family, _htype, index, _ifflags, _change = _IFINFO.unpack_from(data, off + _NLMSG.size)
                name = _ifname(data, off + _NLMSG.size + _IFINFO.size, off + length)
                event = self._apply(kind == RTM_NEWLINK, index, name, now)
                if event is not None:
                    out.append(event)
            off += (length + 3) & ~3
        return out

    def _apply(self, present: bool, index: int, name: str | None, now: int) -> InterfaceEvent | None:
        known = self.names.get(index)
        if present:
            if known is not None and (name is None or name == known):
                return None  # a state change (up/down, carrier) of a known interface
            self.names[index] = name or f"if{index}"
            self.gone.pop(index, None)
            return InterfaceEvent(now, LinkChange.RENAMED if known else LinkChange.APPEARED, self.names[index], index)
        if known is None:
            return None
        del self.names[index]
        self.gone[index] = known
        return InterfaceEvent(now, LinkChange.VANISHED, known, index)

    def _resync(self) -> list[InterfaceEvent]:
        now = time.time_ns()
        current = {i: n for i, n in socket.if_nameindex()}
        out = [e for i in list(self.names) if i not in current
               if (e := self._apply(False, i, None, now)) is not None]
        out += [e for i, n in current.items() if (e := self._apply(True, i, n, now)) is not None]
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _ifname(data: bytes, off: int, end: int) -> str | None:
    while off + _RTA.size <= end:
        length, kind = _RTA.unpack_from(data, off)
        if length < _RTA.size:
            return None
        if kind == IFLA_IFNAME:
            return data[off + _RTA.size : off + length].split(b"\0", 1)[0].decode(errors="replace")
        off += (length + 3) & ~3
    return None
