"""The C encoders write into the ring's output buffer, which each read writes again.

A buffer per block cost 8-10 % more CPU (a fresh glibc mapping per block, page faults and all), so
a ring keeps one bytearray and hands out views of it. What these tests hold the encoders to: the
same bytes as without a buffer, the same buffer from one read to the next when nobody keeps a view,
and never a changed byte under a view that somebody kept (the encoder then writes a new buffer).
"""

from __future__ import annotations

import struct

import pytest

from kstap.capture import afpacket
from kstap.capture.afpacket import AfPacketRing
from kstap.capture.flowtable import FirstPacketTable
from tests.unit.capture.test_afpacket import BLOCK, Frame, _udp_frame, fake_ring

needs_fast = pytest.mark.skipif(afpacket.encode_block is None, reason="C fast path not built")

FRAME = _udp_frame(b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 4000, 53)
OTHER = _udp_frame(b"\x0a\x00\x00\x03", b"\x0a\x00\x00\x02", 4001, 53, payload=b"another payload")


def _frames(frame: bytes, n: int) -> list[Frame]:
    return [(frame, len(frame), 1, 0, 0)] * n


def _ready_again(ring: AfPacketRing, blocks: int) -> None:
    """Hand every block back to user space (as the kernel does when it retires them)."""
    for b in range(blocks):
        struct.pack_into("<I", ring.mm, b * BLOCK + 8, 1)
    ring._block = 0


@needs_fast
def test_a_buffer_gets_the_bytes_a_new_object_gets() -> None:
    assert afpacket.encode_block is not None
    ring = fake_ring([_frames(FRAME, 5)])
    fresh, n, cap, last = afpacket.encode_block(ring.mm, 0, BLOCK, 3, -1)
    out = bytearray(b"\xee" * 7)
    used, n2, cap2, last2, end = afpacket.encode_block(ring.mm, 0, BLOCK, 3, -1, None, 1, out, 7)
    assert used is out
    assert (n2, cap2, last2, end) == (n, cap, last, 7 + len(fresh))
    assert bytes(out[:7]) == b"\xee" * 7  # what lay before pos is kept
    assert bytes(out[7:end]) == fresh


@needs_fast
def test_a_buffer_grows_to_twice_its_size_at_least_and_never_shrinks() -> None:
    assert afpacket.encode_block is not None
    ring = fake_ring([_frames(FRAME, 20)])
    out = bytearray(64)
    out, _, _, _, end = afpacket.encode_block(ring.mm, 0, BLOCK, 0, -1, None, 1, out, 0)
    assert len(out) == end > 128  # more than twice 64 was needed: exactly that
    size = len(out)
    out, _, _, _, end = afpacket.encode_block(ring.mm, 0, BLOCK, 0, 1, None, 1, out, 0)
    assert len(out) == size and end < size  # one packet: the buffer keeps its size
    out, _, _, _, end2 = afpacket.encode_block(ring.mm, 0, BLOCK, 0, -1, None, 1, out, end)
    assert len(out) == 2 * size >= end2  # short by a little: doubled


@needs_fast
def test_a_kept_view_is_never_written_again() -> None:
    assert afpacket.encode_block is not None
    first = fake_ring([_frames(FRAME, 4)])
    second = fake_ring([_frames(OTHER, 4)])
    out = bytearray(1 << 12)
    out, _, _, _, end = afpacket.encode_block(first.mm, 0, BLOCK, 0, -1, None, 1, out, 0)
    kept = memoryview(out)[:end]
    before = bytes(kept)
    again, _, _, _, end2 = afpacket.encode_block(second.mm, 0, BLOCK, 0, -1, None, 1, out, 0)
    assert again is not out
    assert bytes(kept) == before
    assert bytes(again[:end2]) == afpacket.encode_block(second.mm, 0, BLOCK, 0, -1)[0]
    # the first pos bytes move to the new buffer with it
    kept2 = memoryview(again)[:4]
    third, _, _, _, end3 = afpacket.encode_block(first.mm, 0, BLOCK, 0, -1, None, 1, again, end2)
    assert third is not again
    assert bytes(third[:end2]) == bytes(again[:end2])
    assert bytes(third[end2:end3]) == before
    kept.release()
    kept2.release()


@needs_fast
def test_a_bad_buffer_or_position_is_refused() -> None:
    assert afpacket.encode_block is not None
    ring = fake_ring([_frames(FRAME, 2)])
    with pytest.raises(ValueError, match="bytearray"):
        afpacket.encode_block(ring.mm, 0, BLOCK, 0, -1, None, 1, bytearray(4), 5)
    with pytest.raises(ValueError, match="bytearray"):
        afpacket.encode_block(ring.mm, 0, BLOCK, 0, -1, None, 1, b"bytes", 0)  # type: ignore[arg-type]


@needs_fast
def test_each_encoder_writes_into_the_buffer_what_it_returns_without_one() -> None:
    assert afpacket.encode_block_sampled is not None
    ring = fake_ring([_frames(FRAME, 3) + _frames(OTHER, 3)])
    args = (0x5EED, b"mode=percentage rate=0.1")
    alone = FirstPacketTable(*args)
    into = FirstPacketTable(*args)
    fresh = afpacket.encode_block_sampled(ring.mm, 0, BLOCK, 0, -1, alone.table, alone.seed, alone.suffix)
    out = bytearray()
    got = afpacket.encode_block_sampled(ring.mm, 0, BLOCK, 0, -1, into.table, into.seed, into.suffix, None, 1,
                                        afpacket.NO_SHED, 0, b"", afpacket.NO_BOUND, out, 0)
    assert got[0] is out
    assert bytes(out[: got[-2]]) == fresh[0]
    assert got[1:-2] == fresh[1:-1] and got[-1] == fresh[-1]  # and the same table
    assert fresh[3] == 2  # two flows, two comments


@needs_fast
def test_a_ring_reuses_its_buffer_while_nobody_keeps_a_chunk() -> None:
    ring = fake_ring([_frames(FRAME, 6), _frames(OTHER, 6)])
    chunks, packets, _ = ring.read_encoded(1 << 40)
    expected = [bytes(c) for c in chunks]
    assert packets == 12 and len(chunks) == 2  # one chunk per block
    buffer = ring._out
    del chunks
    _ready_again(ring, 2)
    chunks, _, _ = ring.read_encoded(1 << 40)
    assert ring._out is buffer
    assert [bytes(c) for c in chunks] == expected

    kept = chunks[1]
    del chunks
    _ready_again(ring, 2)
    again, _, _ = ring.read_encoded(1 << 40)
    assert ring._out is not buffer  # the kept chunk's buffer is not written again
    assert bytes(kept) == expected[1]
    assert [bytes(c) for c in again] == expected


@needs_fast
def test_one_read_encodes_at_most_out_bytes_of_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(afpacket, "OUT_BYTES", 2 * BLOCK)
    ring = fake_ring([_frames(FRAME, 2)] * 5)
    sizes = []
    while True:
        chunks, packets, _ = ring.read_encoded(1 << 40)
        if not packets:
            break
        sizes.append(len(chunks))
    assert sizes == [2, 2, 1]
