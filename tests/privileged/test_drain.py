"""At a stop the last, partly filled block is drained without spinning on the stop flag's pipe, and
without waiting for a block that holds nothing.

The loop registers the stop flag's pipe with the source's poll set (``wake_on``); once the flag is
set that pipe stays readable. The drain waits for the ring's retire timer: if it polled the pipe
too, every poll returned at once and the drain spun until its deadline.
"""

from __future__ import annotations

import os
import select
import socket
import time

import pytest

from kstap.capture import netns
from kstap.capture.afpacket import AfPacketRing, AfPacketSource, RingConfig
from kstap.demo.lab import Lab
from kstap.filters.bpf import compile_filter

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


class CountingPoll:
    def __init__(self, inner: select.poll) -> None:
        self.inner = inner
        self.calls = 0

    def register(self, fd: int, events: int = select.POLLIN) -> None:
        self.inner.register(fd, events)

    def unregister(self, fd: int) -> None:
        self.inner.unregister(fd)

    def poll(self, timeout: int | None = None) -> list[tuple[int, int]]:
        self.calls += 1
        return self.inner.poll(timeout)


def _server_source(lab: Lab, bpf: str, retire_ms: int) -> AfPacketSource:
    """A source on the server end of the lab: one ring of 4 MiB in 1 MiB blocks."""
    with netns.entered(lab.server):
        ring = AfPacketRing(lab.server_if, compile_filter(bpf), ring=RingConfig(4 << 20, 1 << 20, retire_ms))
    return AfPacketSource([ring])


def test_drain_waits_for_the_retire_timer_instead_of_spinning() -> None:
    with Lab() as lab:
        source = _server_source(lab, "udp", 20)
        counting = CountingPoll(source._poll)
        source._poll = counting  # type: ignore[assignment]
        r, w = os.pipe()
        try:
            source.wake_on(r)
            os.write(w, b"x")  # the stop flag was set: its pipe is readable from now on, and never read
            assert source.drain(20) == []
            # a 50 ms drain waiting on the ring: a handful of polls (it was thousands, one per pass)
            assert counting.calls <= 5, counting.calls
        finally:
            source.close()
            os.close(r)
            os.close(w)


def _send_udp(lab: Lab, count: int) -> None:
    """Datagrams from the client namespace's own UDP stack to the server end."""
    with netns.entered(lab.client):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i in range(count):
                s.sendto(b"drain %d" % i, (lab.server_ip, 9))
        finally:
            s.close()


def test_an_idle_ring_is_drained_without_waiting_for_its_retire_timer() -> None:
    with Lab() as lab:
        source = _server_source(lab, "udp", 1000)
        try:
            assert source.read(0) == []
            start = time.monotonic()
            assert source.drain(1000) == []
            assert time.monotonic() - start < 0.3  # it used to take the whole 1,030 ms
        finally:
            source.close()


def test_packets_in_the_block_being_filled_at_the_stop_are_drained() -> None:
    with Lab() as lab:
        source = _server_source(lab, "udp port 9", 300)
        try:
            assert source.read(0) == []
            _send_udp(lab, 3)
            time.sleep(0.05)  # in the open block, which the kernel hands over 300 ms after it opened
            start = time.monotonic()
            drained = source.drain(300)
            assert len(drained) == 3
            assert time.monotonic() - start < 0.33 + 0.2
        finally:
            source.close()
