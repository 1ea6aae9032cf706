"""-i any's C block encoder (copies removed, SLL2 EPBs) against the Python records path, byte for byte.

The C encoder checks each packet for a copy a few dozen packets after it digested it (its table
slots are prefetched meanwhile); these blocks are long enough to cross that distance, carry copies
on a second interface inside and outside the window, VLAN tags, and several blocks in a row, so
the table's state carries over as it does in a ring.
"""

from __future__ import annotations

import mmap
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kstap.capture import cooked
from kstap.capture.afpacket import TP_STATUS_VLAN_TPID_VALID, TP_STATUS_VLAN_VALID
from kstap.capture.cooked import DEDUP_SLOTS, CookedSource
from kstap.dedup import Dedup
from kstap.formats import pcapng
from kstap.model import SourceStats

BLOCK = 1 << 17
MAC_OFFSET = 80  # after tpacket3_hdr (48) and sockaddr_ll (20), aligned
WINDOW_NS = 5_000_000

# payload index, protocol, ifindex, time step ns, status, vlan tci
Packet = tuple[int, int, int, int, int, int]
PAYLOADS = [bytes([0x45, 0, 0, 40, i, 0, 0, 0, 64 - i, 17, i, i]) + bytes(range(i, i + 16 + 3 * i)) for i in range(6)]


def cooked_ring(blocks: list[list[Packet]]) -> tuple[mmap.mmap, int]:
    """An anonymous mmap laid out as the kernel lays a cooked socket's TPACKET_V3 blocks."""
    mm = mmap.mmap(-1, BLOCK * len(blocks))
    ts = 1_700_000_000 * 1_000_000_000
    for b, packets in enumerate(blocks):
        base, off = b * BLOCK, 48
        for i, (which, proto, ifindex, step, status, tci) in enumerate(packets):
            data = PAYLOADS[which]
            ts += step
            size = (MAC_OFFSET + len(data) + 15) & ~15
            nxt = 0 if i == len(packets) - 1 else size
            struct.pack_into("<IIIIIIHH", mm, base + off, nxt, ts // 1_000_000_000, ts % 1_000_000_000, len(data),
                             len(data) + 4, status, MAC_OFFSET, 0)
            struct.pack_into("<IIH", mm, base + off + 28, 0, tci, 0x88A8)
            struct.pack_into("=HHiHBB8s", mm, base + off + 48, 17, socket_order(proto), ifindex, 1, 0, 6,
                             bytes([2, 0, 0, 0, ifindex, 1, 0, 0]))
            mm[base + off + MAC_OFFSET: base + off + MAC_OFFSET + len(data)] = data
            off += size
            assert off < BLOCK
        struct.pack_into("<III", mm, base + 8, 1, len(packets), 48)
    return mm, len(blocks)


def socket_order(proto: int) -> int:
    return ((proto & 0xFF) << 8) | (proto >> 8)


def source(mm: mmap.mmap, blocks: int) -> CookedSource:
    src = CookedSource.__new__(CookedSource)
    src.mm = mm
    src._block, src._nblocks, src._bsize = 0, blocks, BLOCK
    src._out = bytearray()
    src._stats = SourceStats()
    src.dedup = Dedup(WINDOW_NS)
    src._window_ns = WINDOW_NS
    src._table = bytearray(24 * (DEDUP_SLOTS + 1))
    struct.pack_into("<QQ", src._table, 0, 0, DEDUP_SLOTS)
    src._c_duplicates = 0
    return src


needs_fast = pytest.mark.skipif(cooked.encode_cooked_block is None, reason="the C helper is not built")

packet = st.tuples(st.integers(0, len(PAYLOADS) - 1), st.sampled_from([0x0800, 0x86DD]), st.sampled_from([2, 3]),
                   st.sampled_from([0, 1_000, 400_000, 6_000_000]),
                   st.sampled_from([1, 1 | TP_STATUS_VLAN_VALID, 1 | TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID]),
                   st.integers(0, 0xFFFF))


@needs_fast
@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(packet, min_size=0, max_size=150), min_size=1, max_size=3))
def test_c_and_python_keep_the_same_packets(blocks: list[list[Packet]]) -> None:
    mm, n = cooked_ring(blocks)
    fast = source(mm, n)
    chunks, written, _ = fast._encoded(1 << 30)
    mm2, _ = cooked_ring(blocks)
    slow = source(mm2, n)
    records: list[tuple[int, int, int, bytes, int, int]] = []
    slow._read_blocks(records)
    assert b"".join(chunks) == b"".join(pcapng.enhanced_packets(records))
    assert written == len(records)
    assert slow.dedup is not None
    assert fast._c_duplicates == slow.dedup.removed == sum(len(b) for b in blocks) - written


@needs_fast
def test_a_long_block_of_copies_keeps_one_of_each() -> None:
    """300 packets, each seen on two interfaces back to back: the copies far past the lookahead go too."""
    block = [p for i in range(150) for p in ((i % 6, 0x0800, 2, 3_000_000, 1, 0), (i % 6, 0x0800, 3, 10, 1, 0))]
    mm, n = cooked_ring([block])
    chunks, written, _ = source(mm, n)._encoded(1 << 30)
    assert written == 150 and len(b"".join(chunks)) > 0
