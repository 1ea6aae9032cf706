"""``-i any``'s C path with first-packet comments and --entries (encode_cooked_block_sampled) against
the Python records path (CookedSource._read_blocks + kstap.dedup + flow_key on the SLL2 frame), on
TPACKET_V3 blocks laid out as a cooked socket's (tpacket3_hdr, sockaddr_ll, the network header on)."""

from __future__ import annotations

import io
import mmap
import struct

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kstap.capture import cooked
from kstap.capture.afpacket import NO_BOUND, TP_STATUS_VLAN_TPID_VALID, TP_STATUS_VLAN_VALID
from kstap.capture.cooked import CookedSource
from kstap.capture.flowtable import MARGIN_NS, FirstPacketTable
from kstap.formats import pcapng
from kstap.formats.savefile import CaptureReader
from kstap.model import Interface, PacketRecord
from kstap.sampling import metadata
from kstap.sampling.flowhash import flow_hash
from kstap.sampling.flowkey import flow_key
from tests.unit.capture.test_afpacket import _entries_frames
from tests.unit.capture.test_cooked_encoder import BLOCK, MAC_OFFSET, WINDOW_NS, socket_order
from tests.unit.capture.test_cooked_encoder import source as encoder_source
from tests.unit.capture.test_flowtable import OFFSET, T0, Clock, Decisions, mono

pytestmark = pytest.mark.skipif(cooked.encode_cooked_block_sampled is None, reason="C fast path not built")

SLL2 = 276
SEED = 0x5EED
SUFFIX = metadata.flow_note_suffix("percentage", 0.25, "abc")

Cooked = tuple[bytes, int, int, int, int, int, int]
"""network bytes, protocol (ethertype), ifindex, realtime ns, status, vlan tci, vlan tpid"""


def source(blocks: list[list[Cooked]]) -> CookedSource:
    """A CookedSource over an anonymous mmap laid out as the kernel lays a cooked socket's blocks
    (as tests/unit/capture/test_cooked_encoder.py's, with real packets at given times)."""
    mm = mmap.mmap(-1, BLOCK * len(blocks))
    for b, pkts in enumerate(blocks):
        base, off = b * BLOCK, 48
        for i, (net, proto, ifindex, ts, status, tci, tpid) in enumerate(pkts):
            step = (MAC_OFFSET + len(net) + 15) & ~15
            nxt = 0 if i == len(pkts) - 1 else step
            struct.pack_into("<IIIIIIHH", mm, base + off, nxt, ts // 10**9, ts % 10**9, len(net), len(net) + 4,
                             1 | status, MAC_OFFSET, MAC_OFFSET)
            struct.pack_into("<IIH", mm, base + off + 28, 0, tci, tpid)
            struct.pack_into("=HHiHBB8s", mm, base + off + 48, 17, socket_order(proto), ifindex, 1, ifindex % 5, 6,
                             bytes([ifindex] * 6))
            mm[base + off + MAC_OFFSET : base + off + MAC_OFFSET + len(net)] = net
            off += step
            assert off < BLOCK
        struct.pack_into("<III", mm, base + 8, 1, len(pkts), 48)
    src = encoder_source(mm, len(blocks))
    src.events, src.links = [], None
    return src


def python_records(blocks: list[list[Cooked]]) -> list[PacketRecord]:
    return python_path(blocks)[0]


def python_path(blocks: list[list[Cooked]]) -> tuple[list[PacketRecord], int]:
    """The records the Python path keeps and how many copies it removed."""
    out: list[PacketRecord] = []
    src = source(blocks)
    src._read_blocks(out)
    assert src.dedup is not None
    return out, src.dedup.removed


def read(chunks: list[bytes]) -> list[tuple[PacketRecord, list[str]]]:
    data = pcapng.section_header() + pcapng.interface_description(Interface("any", SLL2)) + b"".join(chunks)
    return [((rec[0], rec[1], rec[2], rec[3], 0, 0), info.comments if info else [])
            for rec, info in CaptureReader(io.BytesIO(data))]


def expected_notes(records: list[PacketRecord], suffix: str = "percentage") -> list[list[str]]:
    """The Python path's rule: the first kept packet of each flow (keyed on its SLL2 frame) is noted."""
    first: set[object] = set()
    out: list[list[str]] = []
    for rec in records:
        key = flow_key(rec[3], SLL2)
        if key is None or key in first:
            out.append([])
            continue
        first.add(key)
        out.append([metadata.flow_note(f"{flow_hash(key, SEED):08x}", "percentage", 0.25, "abc")])
    return out


def net_packet(n: int, v6: bool, tcp: bool, reverse: bool, ttl: int = 64) -> tuple[bytes, int]:
    a, b = (bytes(15) + bytes([n + 1]), bytes(15) + b"\xff") if v6 else (bytes([10, 0, 0, n + 1]), b"\x0a\0\0\xff")
    sp, dp = 1000 + n, 80
    if reverse:
        a, b, sp, dp = b, a, dp, sp
    l4: object = (dpkt.tcp.TCP(sport=sp, dport=dp, flags=0x18, data=b"x" * n) if tcp
                  else dpkt.udp.UDP(sport=sp, dport=dp, data=b"y" * n))
    p = 6 if tcp else 17
    if v6:
        return bytes(dpkt.ip6.IP6(src=a, dst=b, nxt=p, hlim=ttl, data=l4)), 0x86DD
    return bytes(dpkt.ip.IP(src=a, dst=b, p=p, ttl=ttl, id=n, data=l4)), 0x0800


VLAN_STATUS = [0, TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.booleans(), st.booleans(), st.booleans(), st.sampled_from(VLAN_STATUS),
                          st.booleans()), min_size=1, max_size=80))
def test_comments_and_copies_match_the_python_path(
        pkts: list[tuple[int, bool, bool, bool, int, bool]]) -> None:
    """IPv4/IPv6, TCP/UDP, VLAN tags from metadata, a copy on a second interface (TTL one lower):
    the same packets as the Python path, each flow's first one with the comment Python writes."""
    block: list[Cooked] = []
    ts = T0
    for n, v6, tcp, reverse, vlan, copied in pkts:
        net, proto = net_packet(n, v6, tcp, reverse)
        block.append((net, proto, 2, ts, vlan, 5, 0x88A8))
        if copied:  # the same packet routed to another interface (TTL / hop limit one lower)
            block.append((net_packet(n, v6, tcp, reverse, ttl=63)[0], proto, 3, ts + 1000, vlan, 5, 0x88A8))
        ts += 10_000
    block.append((b"\0" * 28, 0x0806, 2, ts, 0, 0, 0))  # ARP: no flow, no comment
    seen = FirstPacketTable(SEED, SUFFIX, capacity=4)
    src = source([block])
    chunks, n, _ = src.read_encoded(0, 1 << 30, seen=seen)
    records, removed = python_path([block])
    got = read(chunks)
    assert [rec for rec, _ in got] == records and n == len(records)
    assert [notes for _, notes in got] == expected_notes(records)
    assert seen.flows_seen == sum(1 for notes in expected_notes(records) if notes)
    assert src._c_duplicates == removed >= (1 if any(p[5] for p in pkts) else 0)


def test_without_a_table_or_records_it_writes_what_encode_cooked_block_writes() -> None:
    block = [(net, proto, 2 + i % 2, T0 + i * 1000, VLAN_STATUS[i % 3], i, 0x8100)
             for i in range(40) for net, proto in [net_packet(i % 6, i % 4 == 0, i % 3 == 0, False, 64 - i % 2)]]
    plain = source([block])
    assert cooked.encode_cooked_block is not None and cooked.encode_cooked_block_sampled is not None
    want = cooked.encode_cooked_block(plain.mm, 0, BLOCK, 0, -1, plain._table, WINDOW_NS)
    c = source([block])
    got = cooked.encode_cooked_block_sampled(c.mm, 0, BLOCK, 0, -1, c._table, WINDOW_NS, None, 0, b"")
    assert got[:5] == want and got[5:] == (0, 0, 0, 0, 0, None)  # no table in, none out


def test_max_packets_counts_the_packets_read_as_encode_cooked_block_does() -> None:
    block = [(net, proto, 2, T0 + i, 0, 0, 0) for i in range(10) for net, proto in [net_packet(i, False, True, False)]]
    src = source([block])
    assert cooked.encode_cooked_block_sampled is not None
    out = cooked.encode_cooked_block_sampled(src.mm, 0, BLOCK, 0, 4, src._table, WINDOW_NS,
                                             FirstPacketTable(SEED, SUFFIX).table, SEED, SUFFIX)
    assert out[1] == 4 and out[3] == 4 and out[5] == 4


def test_entries_hand_python_exactly_what_the_dissectors_use() -> None:
    """--entries on -i any: every packet to the file, the dissectors' packets as records; the
    entries are the Python path's (DNS, DNS-looking, TCP; VLAN-tagged ones too)."""
    from kstap.dissect.api import Entry
    from kstap.dissect.stage import DissectStage

    block: list[Cooked] = []
    for i, frame in enumerate(_entries_frames()):
        etype = struct.unpack_from("!H", frame, 12)[0]
        block.append((frame[14:], etype, 2, T0 + i * 1000, TP_STATUS_VLAN_VALID if i % 2 else 0, 7, 0))
    records = python_records([block])
    for seen in (None, FirstPacketTable(SEED, SUFFIX)):
        wanted: list[PacketRecord] = []
        chunks, n, _ = source([block]).read_encoded(0, 1 << 30, seen=seen, wanted=wanted)
        assert [rec for rec, _ in read(chunks)] == records and n == len(block)
        assert {rec[3] for rec in wanted} == {rec[3] for rec in records[:4] + records[6:9] + records[-1:]}
        assert all(rec in records for rec in wanted)

        def entries(recs: list[PacketRecord]) -> list[str]:
            out: list[Entry] = []
            stage = DissectStage(seed=1, memory_cap=1 << 20, flow_cap=100, idle_timeout=5, emit=out.append)
            stage.feed(recs, [SLL2])
            stage.close()
            return sorted(repr((e.protocol, e.query_name, e.path)) for e in out)

        assert entries(wanted) == entries(records) and entries(wanted)


def test_the_bound_skips_later_packets_and_a_shed_flow_gets_its_mark() -> None:
    """The kernel flow table's bound (no new flow decided after it) and its emergency shed, as on the
    Ethernet ring (tests/unit/capture/test_flowtable.py)."""
    kernel, clock = Decisions(newest=mono(T0)), Clock(offset=OFFSET, mono=mono(T0 + 10**9))
    seen = FirstPacketTable(SEED, SUFFIX, capacity=4, kernel=kernel, clock=clock)
    flows = [net_packet(i, i % 2 == 1, i % 3 == 0, False) for i in range(40)]
    before = [(net, proto, 2, T0 + i, 0, 0, 0) for i, (net, proto) in enumerate(flows)]
    late = [(net_packet(50, False, False, False)[0], 0x0800, 2, T0 + MARGIN_NS + 10**6, 0, 0, 0)]
    assert seen.lookup_bound() == T0 + MARGIN_NS
    got = read(source([before + late]).read_encoded(0, 1 << 30, seen=seen)[0])
    assert all(notes for _, notes in got[:40]) and got[40][1] == []  # past the bound: not looked up
    shed_at = T0 + 20 * 10**9
    seen.shed(1 << 31, shed_at, metadata.shed_note_suffix(0.5))
    clock.mono = mono(shed_at + 10**9)
    after = [(net, proto, 3, shed_at + 1000 + i, 0, 0, 0) for i, (net, proto) in enumerate(flows)] * 2
    marks = read(source([after]).read_encoded(0, 1 << 30, seen=seen)[0])

    def fid(rec: PacketRecord) -> int:
        key = flow_key(rec[3], SLL2)
        assert key is not None
        return flow_hash(key, SEED)

    marked = [fid(rec) for rec, notes in marks if notes]
    assert sorted(marked) == sorted(fid(rec) for rec, _ in marks[:40] if fid(rec) >= 1 << 31) and len(marked) > 5
    assert all(notes[0].startswith(f"kstap: shed id={fid(rec):08x} ") for rec, notes in marks if notes)
    assert seen.flows_shed == len(marked)


def test_an_overlay_flow_is_keyed_by_its_inner_packet_and_a_cut_key_turns_the_bound_off() -> None:
    """VXLAN on -i any: the comment has the inner flow's hash (Python's key of the SLL2 frame, the
    kernel's), the bound stays on; a packet whose key the snaplen cut turns it off (keys_cut)."""
    kernel, clock = Decisions(newest=mono(T0)), Clock(mono=mono(T0 + 10**9))
    seen = FirstPacketTable(SEED, SUFFIX, capacity=4, kernel=kernel, clock=clock)
    inner = bytes(dpkt.ethernet.Ethernet(type=0x0800, data=net_packet(3, False, True, False)[0]))
    vxlan = bytes(dpkt.ip.IP(src=b"\x0a\0\0\x01", dst=b"\x0a\0\0\x02", p=17,
                             data=dpkt.udp.UDP(sport=40000, dport=4789, data=b"\x08" + bytes(7) + inner)))
    block = [(vxlan, 0x0800, 2, T0, 0, 0, 0)]
    got = read(source([block]).read_encoded(0, 1 << 30, seen=seen)[0])
    assert [notes for _, notes in got] == expected_notes(python_records([block]))
    key = flow_key(got[0][0][3], SLL2)
    assert key is not None and key.a_port in (80, 1003)  # the inner TCP flow
    assert seen.keys_cut == 0 and seen.lookup_bound() != NO_BOUND
    # VXLAN in VXLAN, an IPv6 flow inside (a key past the first 128 bytes copied: the head is keyed whole)
    deep_inner = bytes(dpkt.ethernet.Ethernet(type=0x86DD, data=net_packet(4, True, False, False)[0]))
    mid = bytes(dpkt.ethernet.Ethernet(type=0x0800, data=dpkt.ip.IP(
        src=b"\x0a\1\0\x01", dst=b"\x0a\1\0\x02", p=17,
        data=dpkt.udp.UDP(sport=40001, dport=4789, data=b"\x08" + bytes(7) + deep_inner))))
    nested = bytes(dpkt.ip.IP(src=b"\x0a\0\0\x01", dst=b"\x0a\0\0\x02", p=17,
                              data=dpkt.udp.UDP(sport=40000, dport=4789, data=b"\x08" + bytes(7) + mid)))
    deep = [(nested, 0x0800, 2, T0 + 1, TP_STATUS_VLAN_VALID, 9, 0)]
    got = read(source([deep]).read_encoded(0, 1 << 30, seen=seen)[0])
    key = flow_key(got[0][0][3], SLL2)
    assert key is not None and key.family == 6 and got[0][1] == expected_notes(python_records([deep]))[0]
    assert seen.keys_cut == 0
    cut = [(vxlan[:49], 0x0800, 2, T0 + 2, 0, 0, 0)]  # the inner Ethernet header cut (the wire had 4 more bytes)
    source([cut]).read_encoded(0, 1 << 30, seen=seen)
    assert seen.keys_cut == 1 and seen.lookup_bound() == NO_BOUND
