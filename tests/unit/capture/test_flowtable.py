"""The first-packet table with the kernel flow table's word: packets stamped after the newest new-flow
decision skip the table, and still every kept flow gets exactly one comment, on its first packet.

The blocks are laid out as the kernel lays TPACKET_V3 blocks (see test_afpacket.py); the kernel's
two answers (its newest new-flow decision, when it last saw a flow) come from :class:`Decisions`,
the same two numbers the real maps give (tests/privileged/test_first_packet_bound.py reads those).
"""

from __future__ import annotations

import io
import mmap
import struct
from dataclasses import dataclass, field

import pytest

from kstap.capture import afpacket
from kstap.capture.afpacket import NO_BOUND, AfPacketRing
from kstap.capture.flowtable import MARGIN_NS, SHED_SLACK_NS, STEP_HOLD_NS, FirstPacketTable
from kstap.formats import pcapng
from kstap.formats.savefile import CaptureReader
from kstap.sampling import metadata
from kstap.sampling.flowhash import flow_hash
from kstap.sampling.flowkey import flow_key
from tests.unit.capture.test_afpacket import MAC_OFFSET, _udp_frame, fake_ring, pcapng_iface
from tests.unit.sampling.test_flowhash_tunnels import vxlan

pytestmark = pytest.mark.skipif(afpacket.encode_block_sampled is None, reason="C fast path not built")

SEED = 0x5EED
SUFFIX = metadata.flow_note_suffix("auto", 1.0, "abc")
BIG = 1 << 20
T0 = 1_800_000_000 * 10**9
"""Realtime ns of the first packet; the fake clock's realtime - monotonic is OFFSET."""
OFFSET = T0 - 10**12


@dataclass
class Decisions:
    """:class:`kstap.contracts.FlowDecisions` with the numbers a test sets (CLOCK_MONOTONIC ns)."""

    newest: int = 0
    seen: dict[int, int] = field(default_factory=dict)
    idle_timeout_ns: int = 60 * 10**9

    def newest_kept_ns(self) -> int:
        return self.newest

    def last_seen_ns(self, flow_hash: int) -> int | None:
        return self.seen.get(flow_hash)


@dataclass
class Clock:
    offset: int = OFFSET
    mono: int = 0

    def __call__(self) -> tuple[int, int]:
        return self.offset, self.mono


def frame(n: int, reverse: bool = False, port: int = 5001) -> bytes:
    a, b = bytes([10, 0, n >> 8, n & 255]), b"\x0a\x01\0\x01"
    return _udp_frame(b, a, port, 1000 + n) if reverse else _udp_frame(a, b, 1000 + n, port)


def ring(blocks: list[list[tuple[bytes, int]]], wire: int = 0) -> AfPacketRing:
    """A ring of 1 MiB blocks whose packets are (frame, realtime ns), laid out as in test_afpacket.py;
    ``wire``: the packets' real length, when the frames are cut short by a snaplen."""
    mm = mmap.mmap(-1, BIG * len(blocks))
    for b, frames in enumerate(blocks):
        off = 48
        for i, (data, ts) in enumerate(frames):
            step = (MAC_OFFSET + len(data) + 15) & ~15
            nxt = 0 if i == len(frames) - 1 else step
            struct.pack_into("<IIIIIIHH", mm, b * BIG + off, nxt, ts // 10**9, ts % 10**9, len(data),
                             max(wire, len(data)), 1,
                             MAC_OFFSET, 0)
            mm[b * BIG + off + MAC_OFFSET : b * BIG + off + MAC_OFFSET + len(data)] = data
            off += step
        struct.pack_into("<III", mm, b * BIG + 8, 1, len(frames), 48)
    r = fake_ring([[]])
    r.mm, r._nblocks, r._bsize = mm, len(blocks), BIG
    return r


def comments(chunks: list[bytes]) -> list[tuple[bytes, list[str]]]:
    idbs = b"".join(pcapng.interface_description(pcapng_iface()) for _ in range(4))  # the fake ring is if 3
    data = pcapng.section_header() + idbs + b"".join(chunks)
    return [(rec[3], info.comments if info else []) for rec, info in CaptureReader(io.BytesIO(data))]


def flow_id(raw: bytes) -> int:
    key = flow_key(raw)
    assert key is not None
    return flow_hash(key, SEED)


def note(raw: bytes) -> list[str]:
    return [metadata.flow_note(f"{flow_id(raw):08x}", "auto", 1.0, "abc")]


def table(kernel: Decisions | None, clock: Clock | None = None, idle_timeout_ns: int = 60 * 10**9) -> FirstPacketTable:
    return FirstPacketTable(SEED, SUFFIX, capacity=4, kernel=kernel, clock=clock or Clock(),
                            idle_timeout_ns=idle_timeout_ns)


def mono(realtime_ns: int) -> int:
    return realtime_ns - OFFSET


def assert_one_comment_per_flow(got: list[tuple[bytes, list[str]]]) -> None:
    first: set[object] = set()
    for raw, notes in got:
        key = flow_key(raw)
        assert notes == ([] if key in first else note(raw)), (key, notes)
        first.add(key)


def test_no_bound_looks_every_packet_up_as_before() -> None:
    """Percentage mode and the user-space fallback pass no bound (or NO_BOUND): the same bytes as before."""
    packets = [(frame(i % 7, reverse=i % 3 == 0), T0 + i * 1000) for i in range(200)]
    without, bounded = table(None), table(None)
    assert without.lookup_bound() == NO_BOUND
    assert encode_block_sampled is not None
    plain = encode_block_sampled(ring([packets]).mm, 0, BIG, 3, 1 << 30, without.table, SEED, SUFFIX)
    explicit = encode_block_sampled(ring([packets]).mm, 0, BIG, 3, 1 << 30, bounded.table, SEED, SUFFIX,
                                    None, 1, 1 << 32, 0, b"", NO_BOUND)
    assert plain == explicit and plain[3] == 7
    assert_one_comment_per_flow(comments([plain[0]]))


encode_block_sampled = afpacket.encode_block_sampled


def test_a_packet_stamped_after_the_bound_is_not_looked_up() -> None:
    """At the bound: looked up; one nanosecond later: neither keyed nor put in the table."""
    seen = table(None)
    a, b, c = frame(1), frame(2), frame(3)
    assert encode_block_sampled is not None
    out = encode_block_sampled(ring([[(a, T0), (b, T0 + 5), (c, T0 + 6)]]).mm, 0, BIG, 3, 1 << 30, seen.table,
                               SEED, SUFFIX, None, 1, 1 << 32, 0, b"", T0 + 5)
    seen.table = out[-1]
    assert [n for _, n in comments([out[0]])] == [note(a), note(b), []]
    assert out[3] == 2 and seen.count == 2


def test_flows_starting_in_a_busy_block_after_a_quiet_period_each_get_one_comment() -> None:
    """200 flows start, run 30 s (their packets skip the table), then 300 start at once in the middle of a
    busy block while the old ones go on, then everything goes on: one comment per flow, on its first packet."""
    kernel, clock = Decisions(), Clock()
    seen = table(kernel, clock)
    old = [frame(i) for i in range(200)]
    new = [frame(1000 + i, reverse=i % 2 == 0) for i in range(300)]
    # start: the kernel decided the old flows just before their first packets
    kernel.newest, clock.mono = mono(T0 + 200), mono(T0 + 10**9)
    start = [(raw, T0 + i) for i, raw in enumerate(old)] + [(raw, T0 + 10**6 + i) for i, raw in enumerate(old)]
    r = ring([start])
    chunks, n, _ = r.read_encoded(1 << 30, seen=seen)
    got = comments(chunks)
    # 30 s later, a busy block: the old flows' packets, with the new flows starting at T1 among them
    t1 = T0 + 30 * 10**9
    kernel.newest, clock.mono = mono(t1 + 299), mono(t1 + 10**9)
    busy = [(raw, t1 - 10**6 + i) for i, raw in enumerate(old)]
    busy += [(raw, t1 + i) for i, raw in enumerate(new)]  # many at once
    busy += [(raw, t1 + MARGIN_NS + 10**6 + i) for i, raw in enumerate(old + new)]  # past the margin: skipped
    chunks, n, _ = ring([busy]).read_encoded(1 << 30, seen=seen)
    got += comments(chunks)
    assert n == len(busy)
    assert_one_comment_per_flow(got)
    assert seen.flows_seen == 500
    assert sum(bool(c) for _, c in got) == 500


def test_the_bound_is_the_newest_decision_in_realtime_plus_the_margin() -> None:
    kernel, clock = Decisions(newest=5 * 10**9), Clock(mono=6 * 10**9)
    seen = table(kernel, clock)
    assert seen.lookup_bound() == 5 * 10**9 + OFFSET + MARGIN_NS


def test_a_clock_step_looks_everything_up_for_a_while() -> None:
    kernel, clock = Decisions(newest=10**9), Clock(mono=2 * 10**9)
    seen = table(kernel, clock)
    assert seen.lookup_bound() != NO_BOUND
    clock.offset -= 3 * 10**6  # the realtime clock stepped back 3 ms
    assert seen.lookup_bound() == NO_BOUND
    clock.mono += STEP_HOLD_NS - 1
    assert seen.lookup_bound() == NO_BOUND  # still held: older stamps may be in the next blocks
    clock.mono += 1
    assert seen.lookup_bound() == 10**9 + clock.offset + MARGIN_NS
    clock.offset += 500_000  # half a millisecond: slew and read noise, no step
    assert seen.lookup_bound() == 10**9 + clock.offset + MARGIN_NS


def test_after_a_shed_every_packet_is_looked_up_until_the_last_mark_can_come() -> None:
    kernel, clock = Decisions(newest=10**9, idle_timeout_ns=7 * 10**9), Clock(mono=2 * 10**9)
    seen = table(kernel, clock)
    shed_at = T0 + 10**9
    seen.shed(1 << 31, shed_at, b"shed")
    assert seen.lookup_bound() == shed_at + 7 * 10**9 + SHED_SLACK_NS
    kernel.newest = mono(shed_at + 20 * 10**9)  # a new flow long after: its own bound again
    assert seen.lookup_bound() == shed_at + 20 * 10**9 + MARGIN_NS


def test_a_shed_flow_is_marked_though_its_packets_skipped_the_table_before() -> None:
    kernel, clock = Decisions(newest=mono(T0)), Clock(mono=mono(T0 + 10**9))
    seen = table(kernel, clock)
    flows = [frame(i) for i in range(64)]
    ring([[(raw, T0 + i) for i, raw in enumerate(flows)]]).read_encoded(1 << 30, seen=seen)
    later = [(raw, T0 + 10 * 10**9 + i) for i, raw in enumerate(flows)]  # skipped
    assert not any(c for _, c in comments(ring([later]).read_encoded(1 << 30, seen=seen)[0]))
    shed_at = T0 + 20 * 10**9
    seen.shed(1 << 31, shed_at, metadata.shed_note_suffix(0.5))
    clock.mono = mono(shed_at + 10**9)
    after = [(raw, shed_at + 1000 + i) for i, raw in enumerate(flows)] * 2
    got = comments(ring([after]).read_encoded(1 << 30, seen=seen)[0])
    marked = {flow_id(raw) for raw, c in got if c}
    assert marked == {flow_id(raw) for raw in flows if flow_id(raw) >= 1 << 31}
    assert all(c[0].startswith("kstap: shed id=") for _, c in got if c)
    assert seen.flows_shed == len(marked) and len(marked) > 10


def overlay(n: int, reverse: bool = False) -> bytes:
    """Flow n between two pods, in the VXLAN datagram between their nodes (one outer flow for all)."""
    inner = frame(n, reverse)
    return vxlan(inner, 8472)


def test_overlay_flows_keep_the_bound_and_get_one_comment_each_with_the_inner_hash() -> None:
    """The C key follows the tunnel as the kernel does: 60 pod flows inside one node-to-node flow get
    60 comments (the kernel's hashes), and their later packets still skip the table."""
    kernel, clock = Decisions(newest=mono(T0 + 100)), Clock(mono=mono(T0 + 10**9))
    seen = table(kernel, clock)
    start = [(overlay(i, reverse=i % 2 == 1), T0 + i) for i in range(60)]
    later = [(overlay(i, reverse=i % 3 == 0), T0 + MARGIN_NS + 10**6 + i) for i in range(60)]
    chunks, n, _ = ring([start + later]).read_encoded(1 << 30, seen=seen)
    got = comments(chunks)
    assert n == 120
    assert_one_comment_per_flow(got)
    assert [c for _, c in got[:60]] == [note(raw) for raw, _ in start]
    assert flow_key(start[0][0]) == flow_key(frame(0))  # keyed by the pod flow inside
    assert seen.flows_seen == 60 and seen.packets_keyed == 60 and seen.keys_cut == 0
    assert seen.lookup_bound() != NO_BOUND


def test_a_key_the_snaplen_cut_turns_the_bound_off() -> None:
    """The inner ports past the snaplen: this table keys the pod flow without them, the kernel (which read the whole
    packet) the pod flow inside, so it cannot vouch for this table's flows any more."""
    kernel, clock = Decisions(newest=mono(T0)), Clock(mono=mono(T0 + 10**9))
    seen = table(kernel, clock)
    whole = overlay(1)
    ring([[(whole[:87], T0)]], wire=len(whole)).read_encoded(1 << 30, seen=seen)
    assert seen.keys_cut == 1 and seen.lookup_bound() == NO_BOUND
    shallow = table(kernel, clock)  # a snaplen that still holds the whole key: no cut
    ring([[(whole[:88], T0)]], wire=len(whole)).read_encoded(1 << 30, seen=shallow)
    assert shallow.keys_cut == 0 and shallow.lookup_bound() != NO_BOUND


def test_non_ethernet_frames_get_no_bound() -> None:
    kernel, clock = Decisions(newest=0), Clock(mono=mono(T0 + 10**9))
    seen = table(kernel, clock)
    r = ring([[(frame(1), T0 + 10**9)]])
    r.linktype = 12  # raw IP: the C key does not read it as the kernel does
    r.read_encoded(1 << 30, seen=seen)
    assert seen.flows_seen == 1  # looked up, though the kernel decided nothing


def test_expiry_keeps_the_flows_the_kernel_still_sees() -> None:
    """With a 2 s idle timeout: flows whose packets skipped the table survive expiry while the kernel saw
    them within its timeout; the others are forgotten, and come back as new flows."""
    idle = 2 * 10**9
    kernel, clock = Decisions(newest=mono(T0 + 100), idle_timeout_ns=idle), Clock(mono=mono(T0 + 10**6))
    seen = table(kernel, clock, idle_timeout_ns=idle)
    alive, gone, unknown = frame(1), frame(2), frame(3)
    ring([[(alive, T0), (gone, T0 + 1), (unknown, T0 + 2)]]).read_encoded(1 << 30, seen=seen)
    now = T0 + 10 * 10**9
    clock.mono = mono(now)
    kernel.seen = {flow_id(alive): mono(now - 10**9), flow_id(gone): mono(now - 3 * 10**9)}
    seen.expire(now)
    assert seen.count == 1
    # a new flow starts: everybody's packets around it are looked up; only the forgotten two are new again
    kernel.newest = mono(now + 10)
    got = comments(ring([[(alive, now + 1), (gone, now + 2), (unknown, now + 3)]]).read_encoded(1 << 30,
                                                                                               seen=seen)[0])
    assert [c for _, c in got] == [[], note(gone), note(unknown)]
    # looked-up packets refresh the table's own clock, as before
    clock.mono, kernel.seen = mono(now + 10**9), {}
    seen.expire(now + 10**9)
    assert seen.count == 3


def test_a_flow_vouched_for_after_a_shed_still_gets_its_mark() -> None:
    """The kernel let a stale flow's last packet through after the shed; the expiry runs before the
    encoder reads it: the flow stays, and that packet still gets the shed mark."""
    idle = 2 * 10**9
    kernel, clock = Decisions(newest=mono(T0), idle_timeout_ns=idle), Clock(mono=mono(T0 + 10**6))
    seen = table(kernel, clock, idle_timeout_ns=idle)
    flows = [frame(i) for i in range(64)]
    ring([[(raw, T0 + i) for i, raw in enumerate(flows)]]).read_encoded(1 << 30, seen=seen)
    shed_at = T0 + 5 * 10**9
    seen.shed(1 << 31, shed_at, metadata.shed_note_suffix(0.5))
    now = shed_at + 10**6
    clock.mono = mono(now)
    kernel.seen = {flow_id(raw): mono(shed_at + 500) for raw in flows}  # their last packets, past the shed
    seen.expire(now)
    assert seen.count == 64
    got = comments(ring([[(raw, shed_at + 500 + i) for i, raw in enumerate(flows)]]).read_encoded(1 << 30,
                                                                                                  seen=seen)[0])
    assert {flow_id(raw) for raw, c in got if c} == {flow_id(raw) for raw in flows if flow_id(raw) >= 1 << 31}
    assert all(c[0].startswith("kstap: shed id=") for _, c in got if c)


def test_expiry_without_the_kernel_uses_the_table_clock_alone() -> None:
    seen = table(None, idle_timeout_ns=10)
    ring([[(frame(i), T0 + i) for i in range(5)]]).read_encoded(1 << 30, seen=seen)
    seen.expire(T0 + 100)
    assert seen.count == 0
