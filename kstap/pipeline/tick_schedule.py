"""When the capture loop runs its once-a-second work (the tick).

Every wake-up costs CPU before any Python runs, and after a sleep the tick runs with cold caches:
on the VM of docs/benchmarks.md a tick costs ~35 µs when run back to back and ~400 µs once a
second. When only a file waits for the packets the ring hands its blocks over every ``retire_ms``
(1 s, as libpcap's default timeout) at low rates, so a capture that ticks on its own clock wakes
twice a second: once for the block, once for the tick.

With ``coalesce`` (the loop sleeps until a block, the tick or a stop) the tick rides on the block's
wake-up instead:

- a wake-up that brought packets after the loop slept at least :data:`SPARSE` may run the tick up
  to :data:`EARLY` before it is due;
- while packets came in the last :data:`RECENT`, the wait for the tick is :data:`LATE` longer, so
  the next block, handed over by the kernel's retire timer a little more than a second after the
  last one, comes first.

Ticks are then at least ``1 - EARLY`` apart and at most ``1 + LATE``; an idle capture ticks once
a second exactly, and a busy one (blocks handed over more often than every :data:`SPARSE`) at the
first wake-up after the tick is due, as without ``coalesce``.
"""

from __future__ import annotations

PERIOD = 1.0
EARLY = 0.25
"""How much earlier than due a sparse wake-up with packets runs the tick."""
LATE = 0.5
"""How much later than due the tick may wait for a block while packets are coming."""
SPARSE = 0.5
"""A wake-up after at least this long asleep is the retire timer's (or a slow trickle's)."""
RECENT = 1.25
"""Packets within this long count as still coming (a retire period is a little over 1 s)."""


class TickSchedule:
    """The next tick's time, and whether a wake-up at ``now`` should run it."""

    def __init__(self, start: float, *, coalesce: bool) -> None:
        self.due = start + PERIOD
        self.coalesce = coalesce
        self._last_wake = start
        self._last_data = float("-inf")

    def tick_now(self, now: float, packets: bool) -> bool:
        """Called once per wake-up (``packets``: the last read brought some). True: tick now (the
        next one is then due a period later)."""
        slept = now - self._last_wake
        self._last_wake = now
        if packets:
            self._last_data = now
            due = self.due - (EARLY if self.coalesce and slept >= SPARSE else 0.0)
        else:
            due = self.due + self._late(now)
        if now >= due:
            self.due = now + PERIOD
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds the loop may sleep before the tick (0: it is due)."""
        return max(0.0, self.due + self._late(now) - now)

    def _late(self, now: float) -> float:
        return LATE if self.coalesce and now - self._last_data < RECENT else 0.0
