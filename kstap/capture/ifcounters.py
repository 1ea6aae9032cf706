"""Packets the interfaces themselves counted (``/proc/net/dev``), to show what the kernel filter left out.

A kernel filter (the user's BPF expression and the sampling threshold) drops packets before they are
counted anywhere kstap can see: ``PACKET_STATISTICS`` counts only what passed. The interface counters
(received + sent, as AF_PACKET sees both directions) minus what passed is what was left out. It is an
estimate: counters of the whole interface, read once a second, and not for ``-i any`` (a packet crossing
several interfaces counts once per interface there, and the capture writes it once).
"""

from __future__ import annotations

from kstap.capture import netns
from kstap.errors import KstapError

PROC_NET_DEV = "/proc/thread-self/net/dev"
"""The calling thread's network namespace's counters (``/proc/net/dev`` is the process's)."""


def parse_net_dev(text: str) -> dict[str, int]:
    """Interface → received + transmitted packets, from ``/proc/net/dev``'s text."""
    out: dict[str, int] = {}
    for line in text.splitlines()[2:]:
        name, _, fields = line.partition(":")
        values = fields.split()
        if len(values) >= 10:
            out[name.strip()] = int(values[1]) + int(values[9])
    return out


class InterfaceCounters:
    """Packets the captured interfaces counted since :meth:`start` (None where that cannot be known)."""

    def __init__(self, interfaces: list[str], ns: str | None = None) -> None:
        self.interfaces = list(interfaces)
        self.ns = ns
        self.base: int | None = None

    def _total(self) -> int | None:
        if not self.interfaces or any(i in ("any", "") or i.startswith("(") for i in self.interfaces):
            return None
        try:
            with netns.entered(self.ns), open(PROC_NET_DEV, encoding="ascii") as fh:
                counts = parse_net_dev(fh.read())
        except (OSError, ValueError, KeyError, KstapError):
            return None
        if not all(i in counts for i in self.interfaces):
            return None
        return sum(counts[i] for i in self.interfaces)

    def start(self) -> None:
        self.base = self._total()

    def since_start(self) -> int | None:
        now = self._total()
        return None if now is None or self.base is None else max(0, now - self.base)


def left_out(on_interfaces: int | None, passed: int) -> int | None:
    """What the kernel filter left out: the interfaces' packets less those that passed it."""
    return None if on_interfaces is None else max(0, on_interfaces - passed)
