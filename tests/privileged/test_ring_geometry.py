"""The ring a live capture gets: a capture that only writes a file takes big blocks and a long retire
time (fewer wake-ups), one that something waits on (``-w -``, entries, packet lines) small blocks
and a short one. Real rings on a lab veth: the kernel accepted the geometry it was asked for."""

from __future__ import annotations

import os

import pytest

from kstap.capture.afpacket import AfPacketSource
from kstap.config import OutputSettings, TapSettings
from kstap.demo.lab import Lab
from kstap.pipeline.assembly import FILE_BLOCK_MAX, FILE_RETIRE_MS, open_source

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.mark.parametrize(("output", "entries", "buffer_mib", "block", "retire"), [
    ("cap.pcapng", None, 32, FILE_BLOCK_MAX, FILE_RETIRE_MS),  # only a file waits
    ("cap.pcapng", None, 2, 512 << 10, FILE_RETIRE_MS),  # tcpdump's 2 MiB: still a quarter of the ring
    ("-", None, 32, 1 << 20, 20),  # a reader on stdout
    ("cap.pcapng", "entries.ndjson", 32, 1 << 20, 20),  # the dissectors wait on packets
    (None, None, 32, 1 << 20, 20),  # packet lines
])
def test_the_ring_fits_who_waits_for_the_packets(tmp_path, output: str | None, entries: str | None,
                                                 buffer_mib: int, block: int, retire: int) -> None:
    with Lab() as lab:
        settings = TapSettings(interfaces=[lab.server_if], netns=lab.server, bpf_filter="udp", buffer_mib=buffer_mib,
                               entries=str(tmp_path / entries) if entries else None,
                               output=OutputSettings(path=str(tmp_path / output) if output not in (None, "-")
                                                     else output))
        source, retire_ms, _, _ = open_source(settings, "udp", None)
        try:
            assert isinstance(source, AfPacketSource)
            ring = source.rings[0]
            assert (ring._bsize, retire_ms) == (block, retire)
            assert len(ring.mm) == (buffer_mib << 20)  # the kernel mapped the whole ring in blocks of that size
        finally:
            source.close()
