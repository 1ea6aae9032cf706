"""Each packet once: drop the copies one frame leaves on several interfaces of the same node.

The one implementation of the rule: ``-i any``'s cooked capture (:mod:`kstap.capture.cooked`,
50 ms) and the cluster's per-node fold of the workers' streams (:mod:`kstap.remote.vantage`,
200 ms) both key packets with :func:`digest` and remember them in a :class:`Dedup`; the C fast
path (``capture/_ringfast.c``) is its twin, checked packet for packet against it.

On a node, a packet between two pods crosses the sender's host-side veth (arriving from the pod),
maybe the bridge, and the receiver's veth (leaving towards the pod); ``tcpdump -i any`` writes it
two or three times. The rule kept here (docs/capture.md compares it with the alternatives):

    a packet is a copy when the *same network-layer bytes* were seen on a *different interface*
    less than ``window`` ago.

"Same bytes" masks what forwarding changes on a routed hop: the IPv4 TTL and header checksum,
the IPv6 hop limit. Link-layer headers (MAC addresses, the cooked header's interface index and
packet type) are not part of it. Requiring a different interface keeps real duplicates on the
wire (a retransmission on the same veth, a looped frame) as they are. A TCP retransmission
crossing the node is a new packet: Linux gives it a new IPv4 ID, and it comes RTO (>= 200 ms)
after the first try, past the window. Kubeshark's equivalent is ``tap.misc.duplicateTimeframe``
(200 ms, off by default); kstap's default window is much shorter (:data:`DEFAULT_WINDOW_NS`)
because the copies of one packet are microseconds apart.

Packets rewritten on the way (NAT to a Service's endpoint, an overlay's encapsulation) are not
the same bytes and stay: they are different views of the traffic and are keyed differently.
"""

from __future__ import annotations

from collections import deque

from kstap import linklayer

DEFAULT_WINDOW_NS = 50_000_000
"""50 ms: copies of one packet on one node are stamped microseconds apart (softirq forwarding);
even a busy node's backlog stays far below this, and it is 4x shorter than Linux's minimum TCP
retransmission timeout, so a retransmitted segment is never taken for a copy."""


def digest(protocol: int, payload: bytes, origlen: int) -> int:
    """The network-layer identity of a packet, with what a routed hop changes masked."""
    if protocol == 0x0800 and len(payload) >= 20 and payload[0] >> 4 == 4:
        return hash((origlen, payload[:8], payload[9:10], payload[12:]))  # TTL and checksum out
    if protocol == 0x86DD and len(payload) >= 40 and payload[0] >> 4 == 6:
        return hash((origlen, payload[:7], payload[8:]))  # hop limit out
    return hash((protocol, origlen, payload))


def fingerprint(frame: bytes, linktype: int, origlen: int | None = None) -> int | None:
    """:func:`digest` of a whole frame of ``linktype`` (the link layer decoded by :mod:`kstap.linklayer`,
    no tunnel followed: a copy is recognised by its outer packet). ``origlen`` is the frame's length
    on the wire (default: as captured). None when the network layer is not decoded (an unknown link
    type, a truncated header): such a frame is never taken for a copy."""
    etype, off = linklayer.outer(frame, linktype)
    if not etype:
        return None
    return digest(etype, frame[off:], (len(frame) if origlen is None else origlen) - off)


class Dedup:
    """The copies seen in the last ``window_ns``; :meth:`copy` says whether a packet is one."""

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS) -> None:
        self.window_ns = window_ns
        self.removed = 0
        """Copies found (and dropped by the caller) so far."""
        self._seen: dict[int, tuple[int, int]] = {}
        self._order: deque[tuple[int, int]] = deque()

    def copy(self, key: int, ifindex: int, ts: int) -> bool:
        """True when ``key`` was seen on another interface less than the window before ``ts``."""
        seen = self._seen
        order = self._order
        cutoff = ts - self.window_ns
        while order and order[0][0] < cutoff:
            old_ts, old_key = order.popleft()
            got = seen.get(old_key)
            if got is not None and got[0] == old_ts:
                del seen[old_key]
        prev = seen.get(key)
        if prev is not None and prev[1] != ifindex and prev[0] >= cutoff:
            self.removed += 1
            return True
        seen[key] = (ts, ifindex)
        order.append((ts, key))
        return False

    def __len__(self) -> int:
        return len(self._seen)
