"""One vantage point per node: a node's copies of a packet folded into one, and which nodes saw a flow.

A node worker captures every interface that is up (``-i any``). On a node with a bridge CNI a packet
of a target pod crosses the pod's veth, the bridge and, for another node, the uplink: kstap saw it
three times on that node, and a second time on the other node's three. Wireshark users expect what
``tcpdump -i any`` on each node would give *minus* the copies inside one node: one interface per node
and each packet once per node, so a cross-node flow is there twice (once per end: both vantage points,
as the merged file must keep) and a same-node flow once.

:class:`NodeFold` does that in the CLI's merge, per node:

- the copy of a packet is recognised by its bytes from the network header on, with what a hop
  rewrites masked (IPv4 TTL and header checksum, IPv6 hop limit): the link-layer header differs
  between the veth, the bridge and the uplink; an identical packet on the *same* interface is a real
  second packet (a retransmission) and is kept;
- a copy counts only within :data:`WINDOW_NS` of the first (a bridge hands a frame on in microseconds);
- interfaces of one link type share one merged interface, ``NODE/any``.

:class:`EntryMerge` does the same for the workers' entries: a request between pods on two nodes is
dissected on both, and the two entries become one that names both ``nodes``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

WINDOW_NS = 200_000_000
"""Copies of one packet inside a node arrive within microseconds; 200 ms leaves room for a busy node."""
ENTRY_HOLD = 2.0
"""Seconds an entry waits for its twin from another node before it is written alone."""
ENTRY_WINDOW = 1.0
"""Two nodes' entries of one exchange start within this many seconds of each other (each at its first packet)."""


def _network(data: bytes, linktype: int) -> int:
    """Offset of the IP header (-1: not IP or not a link type handled here)."""
    if linktype == 1:  # Ethernet, with up to two VLAN tags
        off = 12
        for _ in range(3):
            if len(data) < off + 2:
                return -1
            etype = (data[off] << 8) | data[off + 1]
            if etype in (0x8100, 0x88A8):
                off += 4
                continue
            return off + 2 if etype in (0x0800, 0x86DD) else -1
        return -1
    if linktype in (101, 12, 14, 228, 229):  # raw IP
        return 0
    if linktype == 113:  # Linux cooked v1
        return 16 if len(data) >= 16 and ((data[14] << 8) | data[15]) in (0x0800, 0x86DD) else -1
    if linktype == 276:  # Linux cooked v2
        return 20 if len(data) >= 20 and ((data[0] << 8) | data[1]) in (0x0800, 0x86DD) else -1
    return -1


def fingerprint(data: bytes, linktype: int) -> bytes | None:
    """The packet's bytes from the IP header on, with what a hop rewrites masked; None for what is not IP."""
    off = _network(data, linktype)
    if off < 0 or len(data) < off + 20:
        return None
    version = data[off] >> 4
    if version == 4:
        body = bytearray(data[off:])
        body[8] = 0  # TTL
        body[10] = body[11] = 0  # header checksum
    elif version == 6 and len(data) >= off + 40:
        body = bytearray(data[off:])
        body[7] = 0  # hop limit
    else:
        return None
    return bytes(body)


class NodeFold:
    """Per-node duplicate folding and flow → nodes bookkeeping for the merge (see the module docstring)."""

    def __init__(self, window_ns: int = WINDOW_NS) -> None:
        self.window_ns = window_ns
        self._recent: dict[int, OrderedDict[tuple[int, int, int], tuple[int, int]]] = {}
        self.folded = 0
        """Copies dropped so far (the same packet on a second interface of one node)."""

    def admit(self, node_index: int, ts: int, data: bytes, linktype: int, local_if: int) -> bool:
        """True to keep this packet; False for a copy of one the node's worker already gave."""
        body = fingerprint(data, linktype)
        if body is None:
            return True
        recent = self._recent.setdefault(node_index, OrderedDict())
        while recent:  # forget what is older than the window
            first = next(iter(recent.values()))
            if first[0] >= ts - self.window_ns:
                break
            recent.popitem(last=False)
        k = (linktype, len(body), hash(body))  # a 64-bit digest: the window holds no packet bytes
        prior = recent.get(k)
        if prior is not None and prior[1] != local_if and ts - prior[0] <= self.window_ns:
            self.folded += 1
            return False
        recent[k] = (ts, local_if)
        return True


_KEY_FIELDS = ("protocol", "client", "server", "method", "path", "authority", "status", "query_name", "query_type",
               "rcode", "transport")


class EntryMerge:
    """The workers' entries, with a cross-node exchange's two entries made one (see the module docstring).

    An entry is held :data:`ENTRY_HOLD` seconds for an entry of the same exchange (same protocol, ends,
    request and answer) from *another* node starting within :data:`ENTRY_WINDOW`; then it is written with
    ``nodes``: every node that saw it. Two identical requests seen by one node stay two entries.
    """

    def __init__(self, hold: float = ENTRY_HOLD, window: float = ENTRY_WINDOW) -> None:
        self.hold, self.window = hold, window
        self._pending: list[tuple[float, dict[str, Any], set[str]]] = []
        self._by_key: dict[tuple[Any, ...], list[tuple[float, dict[str, Any], set[str]]]] = {}
        self.merged = 0
        """Entries folded into their twin from another node."""

    def add(self, node: str, item: dict[str, Any], now: float) -> None:
        key = tuple(item.get(f) for f in _KEY_FIELDS)
        t = float(item.get("time") or 0.0)
        for held in self._by_key.get(key, ()):
            if node not in held[2] and abs(float(held[1].get("time") or 0.0) - t) <= self.window:
                held[2].add(node)
                if t < float(held[1].get("time") or 0.0):  # the exchange began at the earlier first packet
                    held[1]["time"] = t
                self.merged += 1
                return
        entry = (now + self.hold, dict(item), {node})
        self._pending.append(entry)
        self._by_key.setdefault(key, []).append(entry)

    def ready(self, now: float, final: bool = False) -> list[dict[str, Any]]:
        """Entries whose hold is over (all of them with ``final``), oldest first, each with ``nodes``."""
        out: list[dict[str, Any]] = []
        while self._pending and (final or self._pending[0][0] <= now):
            _due, item, nodes = self._pending.pop(0)
            key = tuple(item.get(f) for f in _KEY_FIELDS)
            same = self._by_key.get(key, [])
            same[:] = [e for e in same if e[1] is not item]
            if not same:
                self._by_key.pop(key, None)
            item["nodes"] = sorted(nodes)
            out.append(item)
        return out
