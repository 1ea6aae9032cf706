"""Packets the interfaces themselves counted (``/proc/net/dev``), to show what the kernel filter left out.

A kernel filter (the user's BPF expression and the sampling threshold) drops packets before they are
counted anywhere kstap can see: ``PACKET_STATISTICS`` counts only what passed. The interface counters
(received + sent, as AF_PACKET sees both directions) minus what passed is what was left out. It is an
estimate: counters of the whole interface, read once a second, and not for ``-i any`` (a packet crossing
several interfaces counts once per interface there, and the capture writes it once).

The counters file is opened once, inside the capture's network namespace, and re-read from offset 0 at
each tick: a ``/proc/net`` file stays bound to the namespace it was opened in, so the once-a-second
reading costs one ``pread`` instead of two ``setns`` calls and an open (this is most of what an idle
tick cost; docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import os

from kstap.capture import netns
from kstap.errors import KstapError
from kstap.pseudofiles import read_from_start

PROC_NET_DEV = "/proc/thread-self/net/dev"
"""The calling thread's network namespace's counters (``/proc/net/dev`` is the process's)."""


def parse_net_dev(text: str, wanted: frozenset[str] | None = None) -> dict[str, int]:
    """Interface → received + transmitted packets, from ``/proc/net/dev``'s text (only ``wanted``, if given)."""
    out: dict[str, int] = {}
    for line in text.splitlines()[2:]:
        name, _, fields = line.partition(":")
        name = name.strip()
        if wanted is not None and name not in wanted:
            continue
        values = fields.split()
        if len(values) >= 10:
            out[name] = int(values[1]) + int(values[9])
    return out


class InterfaceCounters:
    """Packets the captured interfaces counted since :meth:`start` (None where that cannot be known)."""

    def __init__(self, interfaces: list[str], ns: str | None = None) -> None:
        self.interfaces = list(interfaces)
        self._wanted = frozenset(self.interfaces)
        self.ns = ns
        self.base: int | None = None
        self._fd: int | None = None

    @property
    def countable(self) -> bool:
        """Named interfaces only (``any`` and the placeholder names of files and workers are not)."""
        return bool(self.interfaces) and not any(i in ("any", "") or i.startswith("(") for i in self.interfaces)

    def _open(self) -> int | None:
        if self._fd is None and self.countable:
            try:
                with netns.entered(self.ns):
                    self._fd = os.open(PROC_NET_DEV, os.O_RDONLY | os.O_CLOEXEC)
            except (OSError, KstapError):
                return None
        return self._fd

    def _total(self) -> int | None:
        fd = self._open()
        if fd is None:
            return None
        try:
            counts = parse_net_dev(read_from_start(fd).decode("ascii", "replace"), self._wanted)
        except (OSError, ValueError):
            return None
        if len(counts) != len(self._wanted):
            return None
        return sum(counts[i] for i in self.interfaces)

    def start(self) -> None:
        self.base = self._total()

    def since_start(self) -> int | None:
        now = self._total()
        return None if now is None or self.base is None else max(0, now - self.base)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def left_out(on_interfaces: int | None, passed: int) -> int | None:
    """What the kernel filter left out: the interfaces' packets less those that passed it."""
    return None if on_interfaces is None else max(0, on_interfaces - passed)
