"""The first-packet table of the C fast path (percentage mode, auto mode's in-kernel flow table).

The kernel already dropped unsampled flows, so the only per-flow work left in user space is to
comment each flow's first packet. The C encoder (``encode_block_sampled``) keeps a set of flow
fingerprints in this table: a bytearray of 16-byte slots, slot 0 being the header (count,
capacity), then one 32-bit flow hash per slot. This class grows it before it fills and forgets
flows idle past the timeout.

With the in-kernel flow table (:class:`kstap.contracts.FlowDecisions`) most lookups are skipped:
the kernel records when it last decided to keep a new flow, and a packet the ring stamped later
than that (plus :data:`MARGIN_NS`) is no flow's first packet, so the encoder neither keys it nor
looks it up (:meth:`FirstPacketTable.lookup_bound`). Long-lived flows then cost user space nothing
per packet. Skipped packets do not refresh their flow's slot, so before forgetting a flow idle by
its own clock the table asks the kernel when it last saw that flow (:meth:`FirstPacketTable.expire`).

The encoder keys a frame as the kernel does (VXLAN and Geneve followed to the inner packet,
:mod:`kstap.linklayer`), so each overlay flow has one comment, with the hash the kernel decided on.
Only a key the snaplen cut short can differ from the kernel's (:attr:`FirstPacketTable.keys_cut`).

What the comment says after ``id=…`` is the sampler's business
(:func:`kstap.sampling.metadata.flow_note_suffix`); the wiring hands it over as bytes.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from kstap.capture.afpacket import NO_BOUND, NO_SHED, table_compact, table_stale
from kstap.contracts import FlowDecisions

_HEADER = struct.Struct("<QQ")
_LAST = struct.Struct("<Q")
FULL_THRESHOLD = NO_SHED
"""A shed threshold that sheds nothing (every 32-bit hash is below it)."""

MARGIN_NS = 50_000_000
"""How much later than the kernel's newest new-flow decision a flow's first packet may be stamped.

- Clock conversion: the kernel's decision time is CLOCK_MONOTONIC, the ring's stamps are
  CLOCK_REALTIME. Both run from one timekeeper and NTP slews them alike (only CLOCK_MONOTONIC_RAW
  is left alone), so realtime - monotonic changes only when the clock is stepped; it is read as a
  pair of monotonic reads around a realtime one (error: half their gap, kept under 25 µs), and a
  step is caught by :data:`STEP_NS`.
- Stamping vs the filter: tpacket_rcv runs the socket filter first and stamps the packet after
  copying it (``tpacket_get_timestamp``, else ``ktime_get_real_ts64``), in the same softirq with
  bottom halves off: microseconds later, up to a 64 KiB GSO copy. A stamp the skb got earlier (on
  receive, ``net_timestamp_check``) is older than the decision: it needs no margin at all.
- What is left is for a virtual CPU preempted by its host between the two, which takes
  milliseconds. 50 ms covers that many times over; its cost is that the packets of the 50 ms after
  each new flow are still looked up (traffic that starts a flow more often than that is looked up
  whole, as without the kernel's help)."""
STEP_NS = 1_000_000
"""realtime - monotonic moving by more than this between two reads is a clock step (settimeofday,
a leap second, a resume): every packet is looked up for :data:`STEP_HOLD_NS` after one is seen."""
STEP_HOLD_NS = 1_000_000_000
"""Packets stamped before a step can still be in blocks the kernel hands over after the read that
saw it (the block it was filling, retired within ``retire_ms``: 20 ms, or 500 ms when only a file
waits): a second is plenty."""
SHED_SLACK_NS = 1_000_000_000
"""An emergency shed is marked on the first packet of each shed flow after it, which comes at most
the kernel's idle timeout after the shed (else the kernel decides the flow anew, a new flow): every
packet is looked up from the shed until then, plus this for the map update's lag after ``shed_ns``."""


def clock_offset() -> tuple[int, int]:
    """(CLOCK_REALTIME - CLOCK_MONOTONIC, CLOCK_MONOTONIC) in ns: a realtime read between two
    monotonic ones, retried (up to twice) while they are more than 50 µs apart, so the offset is off
    by at most 25 µs (worse only on a machine that preempts this thread every time)."""
    mono, real = time.clock_gettime_ns, time.time_ns
    for _ in range(3):
        m1 = mono(time.CLOCK_MONOTONIC)
        r = real()
        m2 = mono(time.CLOCK_MONOTONIC)
        if m2 - m1 < 50_000:
            break
    return r - (m1 + m2) // 2, m2


class FirstPacketTable:
    """The C fast path's flow table plus the text that follows ``id=…`` in each flow comment."""

    def __init__(self, seed: int, suffix: bytes, *, capacity: int = 1 << 12,
                 idle_timeout_ns: int = 60_000_000_000, kernel: FlowDecisions | None = None,
                 clock: Callable[[], tuple[int, int]] = clock_offset) -> None:
        self.seed = seed
        self.suffix = suffix
        """What follows ``id=HASH `` in a first-packet comment (mode, rate, seed id); replaced on a
        live rate change."""
        self.idle_timeout_ns = idle_timeout_ns
        self.table = self._new(capacity)
        """Starts at 4,096 slots (80 KiB, in cache) and doubles as flows come: 65,536 measured
        slower at rate 1 (0.196 -> 0.163 us per packet with the in-place encoder, docs/benchmarks.md).
        The encoder doubles it itself once more than half its slots would be in use, into a new
        bytearray it hands back (``make_room`` in ``_ringfast.c``), so it holds what the flows need:
        sizing it before each block for every packet of the block to be a new flow made it 32,768
        slots for 9,000 packets of 500 flows."""
        self.flows_seen = 0
        self.flows_shed = 0
        self.packets_keyed = 0
        """Packets the encoder keyed and looked up; the others were stamped past the lookup bound."""
        self.keys_cut = 0
        """Keyed packets whose flow key needed bytes past the snaplen (an inner header of a deep
        tunnel under ``-s 96``, say). The kernel keyed the whole packet, so this table's key may not
        be its: the kernel cannot vouch for the flows this table sees, and every packet is looked up
        from the first such packet on (the comments are then those of the file's own keys)."""
        self.shed_threshold, self.shed_ns, self.shed_suffix = FULL_THRESHOLD, 0, b""
        self.kernel = kernel
        """The in-kernel flow table that decided the flows (None: look every packet up)."""
        self.clock = clock
        """(realtime - monotonic, monotonic) ns: :func:`clock_offset` (tests give their own)."""
        self._offset = clock()[0] if kernel is not None else 0
        self._hold_until = 0

    def shed(self, threshold: int, since_ns: int, suffix: bytes) -> None:
        """The kernel flow table shed the flows with hash >= ``threshold`` at ``since_ns``: mark the
        one packet of each that it still lets through (the first at or after that time of a flow
        this table saw before it) with a comment whose text after ``id=HASH `` is ``suffix``."""
        self.shed_threshold, self.shed_ns, self.shed_suffix = threshold, since_ns, suffix

    def lookup_bound(self) -> int:
        """The latest ring timestamp (realtime ns) that can still be a flow's first packet:
        :data:`NO_BOUND` without the kernel's word, after a clock step, or once a key was cut by
        the snaplen (:attr:`keys_cut`); later packets skip the table. Call it after seeing the blocks ready and before
        encoding them: every packet in them was decided before this read, so a new flow's decision
        time is at most the maximum it reads."""
        kernel = self.kernel
        if kernel is None or self.keys_cut:
            return NO_BOUND
        newest = kernel.newest_kept_ns()
        if newest is None:
            return NO_BOUND
        offset, mono = self.clock()
        if abs(offset - self._offset) > STEP_NS:
            self._hold_until = mono + STEP_HOLD_NS
        self._offset = offset
        if mono < self._hold_until:
            return NO_BOUND
        bound = newest + offset + MARGIN_NS
        if self.shed_threshold < FULL_THRESHOLD:  # the shed marks need every packet of the window
            bound = max(bound, self.shed_ns + kernel.idle_timeout_ns + SHED_SLACK_NS)
        return bound

    @staticmethod
    def _new(capacity: int) -> bytearray:
        table = bytearray(16 * (capacity + 1) + 4 * capacity)
        _HEADER.pack_into(table, 0, 0, capacity)
        return table

    @property
    def count(self) -> int:
        return int(_HEADER.unpack_from(self.table, 0)[0])

    @property
    def capacity(self) -> int:
        return int(_HEADER.unpack_from(self.table, 0)[1])

    def expire(self, now_ns: int) -> None:
        """Forget flows idle longer than the timeout (a later packet counts as a new flow). With the
        kernel's help, a flow idle by this table's clock is kept while the kernel saw it within its
        idle timeout: its packets were skipped, not absent."""
        assert table_compact is not None
        cutoff = max(0, now_ns - self.idle_timeout_ns)
        if self.kernel is not None:
            self._vouched(cutoff)
        fresh = self._new(self.capacity)
        table_compact(self.table, fresh, cutoff)
        self.table = fresh

    def _vouched(self, cutoff: int) -> None:
        """Move the last-seen time of each flow idle since before ``cutoff`` to the kernel's, when
        the kernel saw it within its idle timeout (and will not decide it anew at its next packet)."""
        kernel = self.kernel
        assert kernel is not None and table_stale is not None
        offset, mono = self.clock()  # before the lookups: a packet the kernel sees later only helps
        for slot, flow_hash in table_stale(self.table, cutoff):
            last = kernel.last_seen_ns(flow_hash)
            if last is None or mono - last > kernel.idle_timeout_ns:
                continue  # not in the kernel table, or idle there too: its next packet is a new flow
            seen_at = last + offset
            if self.shed_threshold < FULL_THRESHOLD and seen_at >= self.shed_ns:
                seen_at = self.shed_ns - 1  # the packet to carry its shed mark may still be in the ring
            _LAST.pack_into(self.table, 16 * (1 + slot) + 8, max(cutoff, seen_at))
