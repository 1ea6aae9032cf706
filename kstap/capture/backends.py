"""Pick and open a live capture backend: af_packet, libpcap, pf_ring, or the best available."""

from __future__ import annotations

import os

from kstap.capture import interfaces, netns
from kstap.capture.afpacket import AfPacketRing, AfPacketSource, RingConfig
from kstap.capture.cooked import CookedSource
from kstap.capture.fanout import FanoutSource
from kstap.capture.pcap_live import PcapLiveSource, compile_for_live, needs_live_compile
from kstap.contracts import Source
from kstap.dedup import DEFAULT_WINDOW_NS
from kstap.errors import EnvironmentProblem, UsageError
from kstap.filters import libpcap
from kstap.filters.bpf import Program

PF_RING_PROC = "/proc/net/pf_ring"


def pf_ring_problem() -> str | None:
    """Why PF_RING cannot be used here, or None when it can."""
    if not os.path.isdir(PF_RING_PROC):
        return "the pf_ring kernel module is not loaded (no /proc/net/pf_ring)"
    if "PF_RING" not in libpcap.version():
        return f"the libpcap in use is not PF_RING-enabled ({libpcap.version()})"
    return None


def resolve(name: str) -> str:
    """The backend ``best`` stands for on this host."""
    if name != "best":
        return name
    return "pf_ring" if pf_ring_problem() is None else "af_packet"


def cooked(names: list[str], backend: str) -> bool:
    """True when ``names`` is captured through one cooked socket (``-i any`` on af_packet)."""
    return "any" in names and resolve(backend) == "af_packet"


class _AfPacketSingle(AfPacketSource):
    def __init__(self, rings: list[AfPacketRing], program: Program) -> None:
        super().__init__(rings)
        self.interfaces = [r.interface(program) for r in rings]


BLOCK_MAX = 1 << 20
"""The largest ring block for a consumer that waits on packets (live views, streams, entries)."""


def open_live(backend: str, names: list[str], program: Program, *, workers: int, buffer_mib: int,
              ns: str | None, retire_ms: int = 20, restart_workers: bool = False,
              dedup_window_ns: int = DEFAULT_WINDOW_NS, block_max: int = BLOCK_MAX) -> tuple[Source, int]:
    """Open ``names`` with ``backend``; returns the source and its block-retire time (ms).

    The ring's blocks are a quarter of the buffer, between 64 KiB and ``block_max``.

    ``any`` on af_packet is one cooked socket (:mod:`kstap.capture.cooked`; ``program`` must be
    compiled for LINUX_SLL2 and rewritten by ``for_cooked_socket``), with copies of one packet on
    several interfaces removed within ``dedup_window_ns`` (0: keep them). On libpcap it is
    libpcap's own ``any`` device.
    ``restart_workers``: with ``workers > 1``, replace a lost capture worker (see
    :mod:`kstap.capture.fanout`); the caller must then catch ``WorkerLost`` from ``read``.
    """
    ring = RingConfig(buffer_bytes=buffer_mib << 20, block_bytes=min(block_max, max(1 << 16, (buffer_mib << 20) // 4)),
                      retire_ms=retire_ms)
    backend = resolve(backend)
    if "any" in names and len(names) > 1:
        raise UsageError("-i any already captures every interface", hint="give -i any alone, or name interfaces")
    if cooked(names, backend):
        if workers > 1:
            raise UsageError("-i any is one cooked socket; --workers applies to named interfaces",
                             hint="drop --workers, or name the interfaces: -i IFACE (repeatable) --workers N")
        with netns.entered(ns):
            return CookedSource(program, ring=ring, dedup_window_ns=dedup_window_ns), ring.retire_ms
    if names != ["any"]:
        with netns.entered(ns):
            names = interfaces.expand(names)
    if backend == "pf_ring":
        problem = pf_ring_problem()
        if problem:
            raise EnvironmentProblem(f"PF_RING is not available: {problem}",
                                     hint="use --capture af_packet (or best), or install PF_RING and its libpcap")
    if backend in ("libpcap", "pf_ring"):
        with netns.entered(ns):
            src = PcapLiveSource(names, program.expression, snaplen=program.snaplen,
                                 buffer_bytes=buffer_mib << 20)
        return src, 100
    if needs_live_compile(program.expression):
        with netns.entered(ns):
            program = compile_for_live(names[0], program.expression, program.snaplen)
    if workers > 1:
        return FanoutSource(names, program, workers=workers, ring=ring, ns=ns,
                            restart=restart_workers), ring.retire_ms
    rings: list[AfPacketRing] = []
    try:
        with netns.entered(ns):
            for i, n in enumerate(names):
                rings.append(AfPacketRing(n, program, if_id=i, ring=ring))
    except BaseException:
        for r in rings:
            r.close()
        raise
    return _AfPacketSingle(rings, program), ring.retire_ms
