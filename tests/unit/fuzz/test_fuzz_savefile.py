"""The pcap/pcapng reader under fuzzing: only CaptureFormatError escapes, and a file cut anywhere
reads as exactly the packets whose blocks are complete."""

from __future__ import annotations

import io

import seeds
import targets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import mutated

from kstap.formats.savefile import CaptureFormatError, CaptureReader

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILES = seeds.savefile_seeds()


@FAST
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    targets.run_savefile(data)


@FAST
@given(st.sampled_from([b"\x0a\x0d\x0d\x0a", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1"]),
       st.binary(max_size=300))
def test_random_bytes_after_a_valid_magic(magic: bytes, rest: bytes) -> None:
    targets.run_savefile(magic + rest)


@FAST
@given(mutated(FILES, max_edits=8))
def test_damaged_files(data: bytes) -> None:
    targets.run_savefile(data)


def _all(data: bytes) -> list[tuple[int, bytes]]:
    return [(rec[0], rec[3]) for rec, _ in CaptureReader(io.BytesIO(data), "f")]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FILES), st.data())
def test_a_cut_file_reads_as_a_prefix(data: bytes, draw: st.DataObject) -> None:
    whole = _all(data)
    cut = draw.draw(st.integers(0, len(data)))
    got: list[tuple[int, bytes]] = []
    try:
        reader = CaptureReader(io.BytesIO(data[:cut]), "f")
        for rec, _ in reader:
            got.append((rec[0], rec[3]))
    except CaptureFormatError as exc:
        assert exc.packets_ok == len(got)
    assert got == whole[: len(got)]
    if cut == len(data):
        assert got == whole
