"""Percentage mode's seen-flow table for the C fast path.

The kernel already dropped unsampled flows, so the only per-flow work left in user space is to
comment each flow's first packet. The C encoder (``encode_block_sampled``) keeps a set of flow
fingerprints in this table: a bytearray of 16-byte slots, slot 0 being the header (count,
capacity). This class grows it before it fills and forgets flows idle past the timeout.
"""

from __future__ import annotations

import struct

from kstap.sampling import metadata
from kstap.sampling.flowhash import FULL, threshold

_HEADER = struct.Struct("<QQ")


class SeenFlows:
    """The C fast path's flow table plus the text that follows ``id=…`` in each flow comment."""

    def __init__(self, mode: str, rate: float, seed: int, seed_id: str, *, capacity: int = 1 << 12,
                 idle_timeout_ns: int = 60_000_000_000) -> None:
        self.seed = seed
        self.mode, self.seed_id = mode, seed_id
        self.set_rate(rate)
        self.idle_timeout_ns = idle_timeout_ns
        self.table = self._new(capacity)
        self.flows_seen = 0
        self.flows_shed = 0
        self.shed_threshold, self.shed_ns, self.shed_suffix = FULL, 0, b""

    def set_rate(self, rate: float) -> None:
        """New flows' comments name this rate (a live rate change in percentage mode)."""
        note = metadata.flow_note("X", self.mode, rate, self.seed_id)
        self.suffix = note.split("id=X ", 1)[1].encode()

    def shed(self, rate: float, since_ns: int) -> None:
        """The kernel flow table shed flows at or above ``rate`` at ``since_ns``: mark the one packet
        of each it still lets through (the first at or after that time of a flow seen before it)."""
        self.shed_threshold = threshold(rate)
        self.shed_ns = since_ns
        self.shed_suffix = metadata.shed_note("X", rate, "emergency").split("id=X ", 1)[1].encode()
        self.set_rate(rate)

    @staticmethod
    def _new(capacity: int) -> bytearray:
        table = bytearray(16 * (capacity + 1))
        _HEADER.pack_into(table, 0, 0, capacity)
        return table

    @property
    def count(self) -> int:
        return int(_HEADER.unpack_from(self.table, 0)[0])

    @property
    def capacity(self) -> int:
        return int(_HEADER.unpack_from(self.table, 0)[1])

    def ensure_room(self, incoming: int) -> None:
        """Grow (doubling) while ``incoming`` new flows could push the load past one half."""
        from kstap.capture.afpacket import table_compact

        assert table_compact is not None
        while (self.count + incoming) * 2 > self.capacity:
            bigger = self._new(self.capacity * 2)
            table_compact(self.table, bigger, 0)
            self.table = bigger

    def expire(self, now_ns: int) -> None:
        """Forget flows idle longer than the timeout (a later packet counts as a new flow)."""
        from kstap.capture.afpacket import table_compact

        assert table_compact is not None
        fresh = self._new(self.capacity)
        table_compact(self.table, fresh, max(0, now_ns - self.idle_timeout_ns))
        self.table = fresh
