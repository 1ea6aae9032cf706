"""Write a big buffer to a file in slices of 4 KiB (as tcpdump's stdio does) or 64 KiB.

A capture appends about a megabyte at a time (one ring block's EPBs). Since Linux 6.x the page
cache sizes the folios of a write by its length: a 1 MiB ``write()`` takes large folios from
high-order free memory. On a virtual machine with free page reporting (virtio-balloon hands free
high-order blocks back to the host), that memory is no longer backed, and each of its pages costs
the host a fault at first touch. A 4 KiB write takes single pages, which the allocator mostly
serves from its per-CPU lists of recently freed, still backed pages.

Measured on this project's 2-core VM (kernel 6.18) on 2026-12-03, kstap full mode at 200 kpps writing 80 MB in
6.5 s, side by side, 3 rounds: 0.31-0.33 us of CPU per packet with 1 MiB writes, 0.20-0.25 with
4 KiB writes (tcpdump 0.17-0.19); 16 KiB writes did not differ from 1 MiB ones (docs/benchmarks.md,
"What writing the file costs on this VM"). The extra system calls cost about 1 us each: 256 per
megabyte.

Which of 4 KiB and 64 KiB costs less is not the same on every machine, nor on this VM from one day to
the next, so a capture file measures both as it writes and keeps the cheaper (:class:`SliceChooser`).

Slices end on multiples of their size in the file, so 4 KiB ones on page boundaries (the first one
is cut short to reach the next boundary):
a write that begins a new page past the end of the file makes ext4 zero the part of the page it
does not cover (``zero_user_segments``), and 4 KiB appends that are off alignment do that for every
page. A pcapng header and blocks of any size put a capture's appends off alignment from the start.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable

from kstap import c_helpers

write_slices = c_helpers.load("kstap._slices", "write_slices")
"""``write_slices(fd, data, step, offset)``: :func:`write_all`'s loop in C, the GIL released (None
when unavailable). A capture writes up to about 5,000 slices a second; the Python loop costs about
0.27 us of interpreter time for each, on top of the system call."""

WRITE_SLICE = 4096
"""The small slice: one page, tcpdump's stdio buffer (st_blksize); :data:`SLICES` has the large one."""


def slice_for(fd: int) -> int | None:
    """The slice to write ``fd`` in: :data:`WRITE_SLICE` for a regular file (the page cache), None
    (whole buffers) for a pipe, a socket or a device, whose reader gains from fewer, bigger writes."""
    try:
        return WRITE_SLICE if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None


def write_all(fd: int, data: bytes | memoryview, step: int | None = WRITE_SLICE, offset: int = 0) -> None:
    """Write all of ``data`` to ``fd``, in slices of at most ``step`` bytes (None: as the kernel takes it).

    ``offset``: where in the file ``data`` begins; each slice ends on a multiple of ``step`` there.

    Raises the first OSError; what was written before it stays written (callers that must not
    leave half a block behind cut the file back themselves).
    """
    if write_slices is not None:
        write_slices(fd, data, step or 0, offset)
        return
    view = memoryview(data)
    done, size, write = 0, len(view), os.write
    if step is None:
        step, offset = max(size, 1), 0
    while done < size:
        done += write(fd, view[done:done + step - (offset + done) % step])


SLICES = (WRITE_SLICE, 64 << 10)
"""The slice sizes a capture file chooses between (:class:`SliceChooser`)."""
FIRST_SLICE = SLICES[-1]
"""The slice a file starts with: 64 KiB, the cheaper one on this project's VM in every run since the
writes went onto page boundaries and into C (docs/benchmarks.md; 4 KiB writes cost 2.2x as much per
byte there on 2026-12-04, their system calls alone)."""
FIRST_TRIAL_BYTES = 32 << 20
"""Written with :data:`FIRST_SLICE` before the first trial. A trial writes :data:`TRIAL_BYTES` with
the dearer slice as well, which only a file many times larger can win back: a small capture (a
percentage-mode file of 10 MB, say) would pay for its trial and never gain from it."""
TRIAL_PIECE = 256 << 10
"""What each slice writes of one call in a trial, one after the other in alternating order, so both
are measured in the same wake-up, with the same caches and the same free memory."""
TRIAL_BYTES = 1 << 20
"""What each slice writes in a trial before the cheaper one is chosen (four calls of a megabyte)."""
RETRIAL_BYTES = 256 << 20
"""Written with the chosen slice before the next trial: the machine's memory changes under a capture."""


class SliceChooser:
    """Writes a capture file in whichever of :data:`SLICES` costs less CPU here, measured as it writes.

    Which slice is cheaper depends on where the page cache's new pages come from, and that changes
    with the machine and, on a VM with free page reporting, with its history. On this project's VM
    (docs/benchmarks.md, "What writing the file costs on this VM") 4 KiB writes cost 0.20-0.25 us per
    packet against 0.31-0.33 for 1 MiB ones on one day; on another day, with the writes on page
    boundaries and in C, 4 KiB cost 0.095 and 64 KiB 0.076. So a file starts with
    :data:`FIRST_SLICE`; after :data:`FIRST_TRIAL_BYTES` a trial writes a piece of each call with
    each slice, side by side, until each has written :data:`TRIAL_BYTES`, keeps the one with less
    thread CPU time per byte (system calls and page cache included), and tries again after
    :data:`RETRIAL_BYTES`. ``clock``: thread CPU ns (tests give their own).
    """

    def __init__(self, clock: Callable[[], int] = time.thread_time_ns) -> None:
        self.clock = clock
        self.chosen = FIRST_SLICE
        """The slice in use (outside the trial's pieces)."""
        self.trying = False
        self.trials = 0
        """Trials finished."""
        self._left = FIRST_TRIAL_BYTES
        """Bytes to write before the next trial."""
        self._lead = 0
        """Which slice writes first in the next trial call (they take turns)."""
        self._cost: dict[int, int] = dict.fromkeys(SLICES, 0)
        self._bytes: dict[int, int] = dict.fromkeys(SLICES, 0)

    def write(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        """:func:`write_all` ``data`` at ``offset``: with the chosen slice, or, in a trial, a piece with each."""
        if not self.trying:
            write_all(fd, data, self.chosen, offset)
            self._left -= len(data)
            if self._left <= 0:
                self._start_trial()
            return
        view = memoryview(data)
        # the pieces end on page boundaries in the file (never a new page begun off alignment)
        piece = min(TRIAL_PIECE, len(view) // len(SLICES)) // WRITE_SLICE * WRITE_SLICE
        done = 0
        if piece:
            order = SLICES[self._lead:] + SLICES[:self._lead]
            self._lead = (self._lead + 1) % len(SLICES)
            for step in order:
                end = (offset + done + piece) // WRITE_SLICE * WRITE_SLICE - offset
                start = self.clock()
                write_all(fd, view[done:end], step, offset + done)
                self._cost[step] += self.clock() - start
                self._bytes[step] += end - done
                done = end
        if done < len(view):
            write_all(fd, view[done:], self.chosen, offset + done)
        if all(n >= TRIAL_BYTES for n in self._bytes.values()):
            self.chosen = min(SLICES, key=lambda s: self._cost[s] / self._bytes[s])
            self.trials += 1
            self.trying = False
            self._left = RETRIAL_BYTES

    def _start_trial(self) -> None:
        self.trying = True
        self._cost = dict.fromkeys(SLICES, 0)
        self._bytes = dict.fromkeys(SLICES, 0)
