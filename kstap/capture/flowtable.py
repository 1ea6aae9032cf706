"""Percentage mode's first-packet table for the C fast path.

The kernel already dropped unsampled flows, so the only per-flow work left in user space is to
comment each flow's first packet. The C encoder (``encode_block_sampled``) keeps a set of flow
fingerprints in this table: a bytearray of 16-byte slots, slot 0 being the header (count,
capacity). This class grows it before it fills and forgets flows idle past the timeout.

What the comment says after ``id=…`` is the sampler's business
(:func:`kstap.sampling.metadata.flow_note_suffix`); the wiring hands it over as bytes.
"""

from __future__ import annotations

import struct

from kstap.capture.afpacket import table_compact

_HEADER = struct.Struct("<QQ")


class FirstPacketTable:
    """The C fast path's flow table plus the text that follows ``id=…`` in each flow comment."""

    def __init__(self, seed: int, suffix: bytes, *, capacity: int = 1 << 16,
                 idle_timeout_ns: int = 60_000_000_000) -> None:
        self.seed = seed
        self.suffix = suffix
        """What follows ``id=HASH `` in a first-packet comment (mode, rate, seed id); replaced on a
        live rate change."""
        self.idle_timeout_ns = idle_timeout_ns
        self.table = self._new(capacity)
        self.flows_seen = 0

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
        assert table_compact is not None
        while (self.count + incoming) * 2 > self.capacity:
            bigger = self._new(self.capacity * 2)
            table_compact(self.table, bigger, 0)
            self.table = bigger

    def expire(self, now_ns: int) -> None:
        """Forget flows idle longer than the timeout (a later packet counts as a new flow)."""
        assert table_compact is not None
        fresh = self._new(self.capacity)
        table_compact(self.table, fresh, max(0, now_ns - self.idle_timeout_ns))
        self.table = fresh
