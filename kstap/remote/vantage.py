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

It also remembers, per flow (the unordered pair of ``ip:port`` ends, as entries name them), the nodes
whose workers saw it, so an entry of a flow seen on two nodes says both (:meth:`nodes_of`).
"""

from __future__ import annotations

from collections import OrderedDict

WINDOW_NS = 200_000_000
"""Copies of one packet inside a node arrive within microseconds; 200 ms leaves room for a busy node."""
MAX_FLOWS = 65536
"""Flows whose nodes are remembered (least recently seen forgotten first)."""


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


def fingerprint(data: bytes, linktype: int) -> tuple[bytes, tuple[str, str] | None] | None:
    """(the packet's bytes from the IP header, hop fields masked; its two ``ip:port`` ends or None),
    or None for what is not IP."""
    off = _network(data, linktype)
    if off < 0 or len(data) < off + 20:
        return None
    version = data[off] >> 4
    if version == 4:
        ihl = (data[off] & 0x0F) * 4
        body = bytearray(data[off:])
        body[8] = 0  # TTL
        body[10] = body[11] = 0  # header checksum
        proto = data[off + 9]
        src = ".".join(str(b) for b in data[off + 12:off + 16])
        dst = ".".join(str(b) for b in data[off + 16:off + 20])
        l4 = off + ihl
        frag = ((data[off + 6] & 0x1F) << 8) | data[off + 7]
    elif version == 6 and len(data) >= off + 40:
        import ipaddress

        body = bytearray(data[off:])
        body[7] = 0  # hop limit
        proto = data[off + 6]
        src = f"[{ipaddress.IPv6Address(bytes(data[off + 8:off + 24]))}]"
        dst = f"[{ipaddress.IPv6Address(bytes(data[off + 24:off + 40]))}]"
        l4, frag = off + 40, 0
    else:
        return None
    ends = None
    if proto in (6, 17, 132) and not frag and len(data) >= l4 + 4:
        sport = (data[l4] << 8) | data[l4 + 1]
        dport = (data[l4 + 2] << 8) | data[l4 + 3]
        ends = (f"{src}:{sport}", f"{dst}:{dport}")
    return bytes(body), ends


class NodeFold:
    """Per-node duplicate folding and flow → nodes bookkeeping for the merge (see the module docstring)."""

    def __init__(self, window_ns: int = WINDOW_NS, max_flows: int = MAX_FLOWS) -> None:
        self.window_ns = window_ns
        self.max_flows = max_flows
        self._recent: dict[int, OrderedDict[tuple[int, int, int], tuple[int, int]]] = {}
        self._flows: OrderedDict[frozenset[str], set[str]] = OrderedDict()
        self.folded = 0
        """Copies dropped so far (the same packet on a second interface of one node)."""

    def admit(self, node_index: int, node: str, ts: int, data: bytes, linktype: int, local_if: int) -> bool:
        """True to keep this packet; False for a copy of one the node's worker already gave."""
        fp = fingerprint(data, linktype)
        if fp is None:
            return True
        body, ends = fp
        if ends is not None:
            key = frozenset(ends)
            seen = self._flows.get(key)
            if seen is None:
                seen = self._flows[key] = set()
                if len(self._flows) > self.max_flows:
                    self._flows.popitem(last=False)
            else:
                self._flows.move_to_end(key)
            seen.add(node)
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

    def nodes_of(self, client: str, server: str) -> list[str]:
        """The nodes whose workers saw the flow between ``client`` and ``server`` (``ip:port`` each)."""
        return sorted(self._flows.get(frozenset((client, server)), ()))
