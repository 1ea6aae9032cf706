"""One vantage point per node: a node's copies of a packet folded into one, and which nodes saw a flow.

A node worker captures every interface that is up (``-i any``). On a node with a bridge CNI a packet
of a target pod crosses the pod's veth, the bridge and, for another node, the uplink: kstap saw it
three times on that node, and a second time on the other node's three. Wireshark users expect what
``tcpdump -i any`` on each node would give *minus* the copies inside one node: one interface per node
and each packet once per node, so a cross-node flow is there twice (once per end: both vantage points,
as the merged file must keep) and a same-node flow once.

:class:`NodeFold` does that in the CLI's merge, per node:

- the copy of a packet is recognised by the rule of :mod:`kstap.dedup` (the one implementation, shared
  with ``-i any`` on the node): its bytes from the network header on (:mod:`kstap.linklayer` finds it),
  with what a hop rewrites masked (IPv4 TTL and header checksum, IPv6 hop limit): the link-layer header
  differs between the veth, the bridge and the uplink; an identical packet on the *same* interface is a
  real second packet (a retransmission) and is kept;
- a copy counts only within :data:`WINDOW_NS` of the first (a bridge hands a frame on in microseconds);
- interfaces of one link type share one merged interface, ``NODE/any``.

:class:`EntryMerge` does the same for the workers' entries: a request between pods on two nodes is
dissected on both, and the two entries become one that names both ``nodes``.
"""

from __future__ import annotations

from typing import Any

from kstap.dedup import Dedup, fingerprint

WINDOW_NS = 200_000_000
"""Copies of one packet inside a node arrive within microseconds; 200 ms leaves room for a busy node."""
ENTRY_HOLD = 2.0
"""Seconds an entry waits for its twin from another node before it is written alone."""
ENTRY_WINDOW = 1.0
"""Two nodes' entries of one exchange start within this many seconds of each other (each at its first packet)."""


class NodeFold:
    """Per-node duplicate folding for the merge (see the module docstring): one :class:`kstap.dedup.Dedup`
    per node, keyed by :func:`kstap.dedup.fingerprint`, so a node's copies are recognised by the same
    rule as ``-i any``'s on the node itself, with this module's longer window."""

    def __init__(self, window_ns: int = WINDOW_NS) -> None:
        self.window_ns = window_ns
        self._nodes: dict[int, Dedup] = {}

    @property
    def folded(self) -> int:
        """Copies dropped so far (the same packet on a second interface of one node)."""
        return sum(d.removed for d in self._nodes.values())

    def admit(self, node_index: int, ts: int, data: bytes, linktype: int, local_if: int,
              origlen: int | None = None) -> bool:
        """True to keep this packet; False for a copy of one the node's worker already gave."""
        key = fingerprint(data, linktype, origlen)
        if key is None:
            return True
        seen = self._nodes.get(node_index)
        if seen is None:
            seen = self._nodes[node_index] = Dedup(self.window_ns)
        return not seen.copy(key, local_if, ts)


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
