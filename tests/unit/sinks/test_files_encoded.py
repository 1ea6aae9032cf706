"""The fast path's ready-made EPB bytes rotate at -C like the record path."""

from __future__ import annotations

from pathlib import Path

import pytest

from kstap.formats import pcapng
from kstap.formats.savefile import CaptureReader
from kstap.model import Interface
from kstap.sinks.files import PcapngFiles


@pytest.mark.parametrize("view", [False, True], ids=["bytes", "view"])
def test_encoded_batches_are_split_at_the_size_limit(tmp_path: Path, view: bool) -> None:
    """The C path hands over views of the ring's output buffer: they are cut and written as bytes are."""
    records = [(1_700_000_000_000_000_000 + i, 100, 100, bytes([i % 256]) * 100, 0, 0) for i in range(300)]
    encoded = b"".join(pcapng.enhanced_packets(records))
    out = PcapngFiles(str(tmp_path / "cap.pcapng"), [Interface("lo")], counters=lambda: [],
                      rotate_bytes=10_000)
    out.write_encoded([memoryview(bytearray(encoded)) if view else encoded], len(records))
    out.close()
    assert len(out.files) == 4  # 300 packets of 132 bytes = 39.6 kB, files of at most 10 kB plus one packet
    seen = []
    for name in out.files:
        size = Path(name).stat().st_size
        assert size < 10_000 + 132 + 200  # one packet over, plus the statistics block
        with open(name, "rb") as fh:
            seen.extend(rec for rec, _ in CaptureReader(fh, name))
    assert [r[3] for r in seen] == [r[3] for r in records]
    assert out.packets_written == 300
