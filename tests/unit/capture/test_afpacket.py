"""The TPACKET_V3 block parser: C fast path and pure Python give identical pcapng bytes."""

from __future__ import annotations

import mmap
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kstap.capture import afpacket
from kstap.capture.afpacket import TP_STATUS_VLAN_TPID_VALID, TP_STATUS_VLAN_VALID, AfPacketRing
from kstap.formats import pcapng
from kstap.model import SourceStats

BLOCK = 1 << 16
MAC_OFFSET = 80  # where the kernel puts the frame after tpacket3_hdr + sockaddr_ll

Frame = tuple[bytes, int, int, int, int]  # data, wire length, status, vlan tci, vlan tpid


def fake_ring(blocks: list[list[Frame]]) -> AfPacketRing:
    """A ring object over an anonymous mmap laid out exactly as the kernel lays TPACKET_V3 blocks."""
    mm = mmap.mmap(-1, BLOCK * len(blocks))
    for b, frames in enumerate(blocks):
        base = b * BLOCK
        off = 48
        for i, (data, wire, status, tci, tpid) in enumerate(frames):
            step = (MAC_OFFSET + len(data) + 15) & ~15
            nxt = 0 if i == len(frames) - 1 else step
            struct.pack_into("<IIIIIIHH", mm, base + off, nxt, 1_700_000_000 + b, 1000 * i, len(data), wire,
                             status, MAC_OFFSET, 0)
            struct.pack_into("<IIH", mm, base + off + 28, 0x5EED5EED, tci, tpid)  # tp_rxhash first
            mm[base + off + MAC_OFFSET : base + off + MAC_OFFSET + len(data)] = data
            off += step
        struct.pack_into("<III", mm, base + 8, 1, len(frames), 48)
    ring = AfPacketRing.__new__(AfPacketRing)
    ring.mm = mm
    ring._block = 0
    ring._nblocks = len(blocks)
    ring._bsize = BLOCK
    ring._out = bytearray()
    ring.if_id = 3
    ring.linktype = 1
    ring.worker = 0
    ring.stats = SourceStats()
    return ring


def python_bytes(blocks: list[list[Frame]]) -> tuple[bytes, int]:
    out: list[tuple[int, int, int, bytes, int, int]] = []
    fake_ring(blocks).read_blocks(out)
    return b"".join(pcapng.enhanced_packets(out)), len(out)


needs_fast = pytest.mark.skipif(afpacket.encode_block is None, reason="C fast path not built")

frames = st.lists(
    st.tuples(
        st.binary(min_size=0, max_size=300),
        st.integers(0, 2000),
        st.sampled_from([1, 1 | TP_STATUS_VLAN_VALID, 1 | TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID]),
        st.integers(0, 0xFFFF),
        st.sampled_from([0x8100, 0x88A8]),
    ),
    min_size=1,
    max_size=40,
)


def test_python_parser_reads_timestamps_lengths_and_restores_vlan_tags() -> None:
    frame = bytes(range(60))
    ring = fake_ring([[(frame, 1514, 1, 0, 0), (frame, 60, 1 | TP_STATUS_VLAN_VALID, 0x0123, 0)]])
    out: list[tuple[int, int, int, bytes, int, int]] = []
    assert ring.read_blocks(out) == 2
    (ts0, cap0, len0, data0, if0, _), (ts1, cap1, len1, data1, _, _) = out
    assert ts0 == 1_700_000_000 * 10**9 and ts1 == ts0 + 1000
    assert (cap0, len0, data0, if0) == (60, 1514, frame, 3)
    assert (cap1, len1) == (64, 64)
    assert data1 == frame[:12] + b"\x81\x00\x01\x23" + frame[12:]
    # the block went back to the kernel
    assert struct.unpack_from("<I", ring.mm, 8)[0] == afpacket.TP_STATUS_KERNEL
    assert ring.read_blocks(out) == 0


@needs_fast
@settings(max_examples=150, deadline=None)
@given(st.lists(frames, min_size=1, max_size=3))
def test_fast_path_matches_python_byte_for_byte(blocks: list[list[Frame]]) -> None:
    expected, count = python_bytes(blocks)
    chunks, packets, nbytes = fake_ring(blocks).read_encoded(1 << 40)
    assert packets == count
    assert b"".join(chunks) == expected
    assert nbytes == sum(len(d) + (4 if s & TP_STATUS_VLAN_VALID else 0) for blk in blocks for d, _, s, _, _ in blk)


@needs_fast
def test_fast_path_stops_at_max_packets() -> None:
    frame = b"\xaa" * 42
    ring = fake_ring([[(frame, 42, 1, 0, 0)] * 10, [(frame, 42, 1, 0, 0)] * 10])
    chunks, packets, _ = ring.read_encoded(13)
    assert packets == 13
    assert sum(1 for _ in _blocks(b"".join(chunks))) == 13


@needs_fast
def test_fast_path_rejects_corrupt_offsets() -> None:
    ring = fake_ring([[(b"x" * 10, 10, 1, 0, 0)] * 3])
    struct.pack_into("<I", ring.mm, 48, 0)  # next_offset 0 before the last packet
    assert afpacket.encode_block is not None
    with pytest.raises(ValueError, match="corrupt"):
        afpacket.encode_block(ring.mm, 0, BLOCK, 0, 100)


def _blocks(data: bytes) -> list[int]:
    pos, out = 0, []
    while pos < len(data):
        btype, length = struct.unpack_from("<II", data, pos)
        assert btype == pcapng.BT_EPB
        out.append(length)
        pos += length
    return out


# -- percentage mode's fast path: first-packet comments computed in C ---------------------------------

def _udp_frame(src: bytes, dst: bytes, sport: int, dport: int, v6: bool = False, payload: bytes = b"payload") -> bytes:
    import dpkt

    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    ip: object = (dpkt.ip6.IP6(src=src, dst=dst, nxt=17, hlim=64, data=u) if v6
                  else dpkt.ip.IP(src=src, dst=dst, p=17, data=u))
    return bytes(dpkt.ethernet.Ethernet(type=0x86DD if v6 else 0x0800, data=ip))


needs_sampled = pytest.mark.skipif(afpacket.encode_block_sampled is None, reason="C fast path not built")


@needs_sampled
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.booleans(), st.booleans(), st.booleans(),
                          st.sampled_from(["", "vxlan", "geneve"])), min_size=1, max_size=60),
       st.integers(0, 2**32 - 1))
def test_c_first_packet_comments_match_python_flow_ids(flows: list[tuple[int, bool, bool, bool, str]],
                                                        seed: int) -> None:
    """Every flow's first packet (either direction) carries exactly the comment Python would write; a
    flow inside a VXLAN or Geneve datagram is the inner one (every edge: test_ringfast_tunnels.py)."""
    frames: list[Frame] = []
    for n, reverse, v6, vlan, tunnel in flows:
        a, b = (bytes(15) + bytes([n + 1]), bytes(15) + b"\xff") if v6 else (bytes([10, 0, 0, n + 1]), b"\x0a\0\0\xff")
        src, dst, sp, dp = (b, a, 53, 1000 + n) if reverse else (a, b, 1000 + n, 53)
        raw = _udp_frame(src, dst, sp, dp, v6)
        if tunnel == "vxlan":
            raw = _udp_frame(b"\xc0\0\2\1", b"\xc0\0\2\2", 40000 + n, 4789, payload=b"\x08\0\0\0\0\0\x2a\0" + raw)
        elif tunnel == "geneve":
            raw = _udp_frame(b"\xc0\0\2\2", b"\xc0\0\2\1", 40000, 6081, payload=b"\0\0\x65\x58\0\0\x2b\0" + raw)
        frames.append((raw, len(raw), 1 | (TP_STATUS_VLAN_VALID if vlan else 0), 5, 0x8100))
    _assert_first_packets_commented(frames, seed)


def _assert_first_packets_commented(frames: list[Frame], seed: int) -> None:
    """The C encoder's file, read back: each flow's first packet (Python's key of the frame in the
    file) carries exactly the comment Python would write, and no other packet has one."""
    import io

    from kstap.capture.flowtable import FirstPacketTable
    from kstap.formats.savefile import CaptureReader
    from kstap.sampling import metadata
    from kstap.sampling.flowhash import flow_hash, seed_id
    from kstap.sampling.flowkey import flow_key

    ring = fake_ring([frames])
    seen = FirstPacketTable(seed, metadata.flow_note_suffix("percentage", 0.25, seed_id(seed)), capacity=4)
    chunks, packets, _ = ring.read_encoded(1 << 30, seen=seen)
    assert packets == len(frames)
    idbs = b"".join(pcapng.interface_description(pcapng_iface()) for _ in range(4))  # the fake ring is if 3
    data = pcapng.section_header() + idbs + b"".join(chunks)
    first_seen: set[object] = set()
    for rec, info in CaptureReader(io.BytesIO(data)):
        key = flow_key(rec[3])
        comments = info.comments if info else []
        if key is not None and key not in first_seen:
            first_seen.add(key)
            assert comments == [metadata.flow_note(f"{flow_hash(key, seed):08x}", "percentage", 0.25, seed_id(seed))]
        else:
            assert comments == []
    assert seen.flows_seen == len(first_seen)


def _ip_frame(v6: bool, proto: int, src: bytes, dst: bytes, l4: bytes, options: bytes = b"", frag: int = 0) -> bytes:
    """An Ethernet frame of one IP packet whose payload is ``l4`` (for the ported protocols, its
    first four bytes are the ports)."""
    import dpkt

    ip: object = (dpkt.ip6.IP6(src=src, dst=dst, nxt=proto, hlim=64, data=l4) if v6
                  else dpkt.ip.IP(_v_hl=0x45 + len(options) // 4, src=src, dst=dst, p=proto, _flags_offset=frag,
                                  opts=options, data=l4))
    return bytes(dpkt.ethernet.Ethernet(type=0x86DD if v6 else 0x0800, data=ip))


@needs_sampled
@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([6, 17, 132, 1, 58, 47]), st.integers(0, 3),
                          st.integers(0, 3), st.sampled_from([53, 80, 4789, 6081, 8472, 65535]),
                          st.integers(0, 10), st.sampled_from([0, 0x2000, 0x4000, 0x0010, 0x2001]),
                          st.binary(max_size=24), st.booleans()),
               min_size=1, max_size=120),
       st.integers(0, 2**32 - 1))
def test_every_ip_frame_gets_the_first_packet_comment_python_gives_it(
        packets: list[tuple[bool, int, int, int, int, int, int, bytes, bool]], seed: int) -> None:
    """The common frames (untagged IPv4/IPv6 with whole headers) take a short keying path in C; the
    rest take the general one. Both give Python's flows: TCP, UDP, SCTP and unported protocols,
    IPv4 options and fragments, datagrams to tunnel ports that are no tunnel, tagged frames, and more
    packets than the lookups wait for (the window of LOOKAHEAD)."""
    frames: list[Frame] = []
    for v6, proto, a, b, port, words, frag, rest, vlan in packets:
        src, dst = ((bytes(15) + bytes([a + 1]), bytes(15) + bytes([b + 1])) if v6
                    else (bytes([10, 0, 0, a + 1]), bytes([10, 0, 0, b + 1])))
        l4 = struct.pack("!HH", 40000 + a, port) + rest
        raw = _ip_frame(v6, proto, src, dst, l4, options=b"\x01" * (4 * words), frag=frag)
        frames.append((raw, len(raw), 1 | (TP_STATUS_VLAN_VALID if vlan else 0), 7, 0x8100))
    _assert_first_packets_commented(frames, seed)


def pcapng_iface():  # type: ignore[no-untyped-def]
    from kstap.model import Interface

    return Interface("fake")


@needs_sampled
def test_seen_table_grows_and_expires() -> None:
    from kstap.capture.flowtable import FirstPacketTable
    from kstap.sampling import metadata

    seen = FirstPacketTable(1, metadata.flow_note_suffix("percentage", 0.5, "abc"), capacity=4, idle_timeout_ns=10)
    frames: list[Frame] = [(_udp_frame(bytes([10, 0, i >> 8, i & 255]), b"\x0a\0\0\xff", 1, 2), 60, 1, 0, 0)
                           for i in range(300)]
    ring = fake_ring([frames])
    ring.read_encoded(1 << 30, seen=seen)
    assert seen.flows_seen == 300 and seen.count == 300 and seen.capacity >= 600
    seen.expire(now_ns=10**20)
    assert seen.count == 0


@needs_sampled
def test_the_table_grows_with_the_flows_not_with_the_packets_of_a_block() -> None:
    """The encoder doubles the table as flows come, within a block, and only then: 300 packets of
    3 flows leave it at its first size (it used to be sized for every packet being a new flow)."""
    from kstap.capture.flowtable import FirstPacketTable
    from kstap.sampling import metadata

    seen = FirstPacketTable(1, metadata.flow_note_suffix("percentage", 0.5, "abc"), capacity=16)
    frames: list[Frame] = [(_udp_frame(bytes([10, 0, 0, i % 3]), b"\x0a\0\0\xff", 1, 2), 60, 1, 0, 0)
                           for i in range(300)]
    given = seen.table
    chunks, packets, _ = fake_ring([frames]).read_encoded(1 << 30, seen=seen)
    assert packets == 300 and seen.flows_seen == 3 and seen.capacity == 16 and seen.table is given
    assert sum(c.count(b"kstap: flow id=") for c in map(bytes, chunks)) == 3
    bigger = [(_udp_frame(bytes([10, 1, 0, i]), b"\x0a\0\0\xff", 1, 2), 60, 1, 0, 0) for i in range(20)]
    fake_ring([bigger]).read_encoded(1 << 30, seen=seen)
    assert seen.flows_seen == 23 and seen.count == 23 and seen.capacity == 64 and seen.table is not given


def _dns(qid: int, response: bool) -> bytes:
    import dpkt

    msg = dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name="example.com")])
    if response:
        msg.qr = dpkt.dns.DNS_R
        msg.an = [dpkt.dns.DNS.RR(name="example.com", rdata=b"\x01\x02\x03\x04", ttl=5)]
    return bytes(msg)


def _entries_frames() -> list[bytes]:
    import dpkt

    a, b = b"\x0a\0\0\x01", b"\x0a\0\0\x02"

    def eth(ip: object, etype: int = 0x800) -> bytes:
        return bytes(dpkt.ethernet.Ethernet(type=etype, data=ip))

    out = []
    for sport, dport, payload in ((40000, 53, _dns(7, False)), (53, 40000, _dns(7, True)),
                                  (40001, 5300, _dns(8, False)), (5300, 40001, _dns(8, True)),
                                  (40002, 9, b"nothing to see here, not DNS at all"), (40003, 9, b"x")):
        src, dst = (a, b) if dport in (53, 5300, 9) else (b, a)
        out.append(eth(dpkt.ip.IP(src=src, dst=dst, p=17, data=dpkt.udp.UDP(sport=sport, dport=dport, data=payload))))
    for flags, data in ((0x02, b""), (0x12, b""), (0x18, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")):
        out.append(eth(dpkt.ip.IP(src=a, dst=b, p=6, data=dpkt.tcp.TCP(sport=40100, dport=80, flags=flags,
                                                                       seq=1, data=data))))
    out.append(eth(dpkt.ip.IP(src=a, dst=b, p=1, data=dpkt.icmp.ICMP(type=8, data=b"ping"))))
    out.append(eth(b"\0" * 28, 0x0806))  # ARP
    frag = dpkt.ip.IP(src=a, dst=b, p=17, data=dpkt.udp.UDP(sport=1, dport=53, data=_dns(9, False)))
    frag.mf = 1  # type: ignore[attr-defined]
    out.append(eth(frag))
    out.append(eth(dpkt.ip6.IP6(src=a * 4, dst=b * 4, nxt=17, hlim=64,
                                data=dpkt.udp.UDP(sport=40200, dport=53, data=_dns(10, False)))))
    return out


@needs_fast
def test_entries_fast_path_hands_python_exactly_what_the_dissectors_use() -> None:
    """Everything goes to the file; the packets C keeps from Python change no entry."""
    from kstap.dissect.api import Entry
    from kstap.dissect.stage import DissectStage

    frames_ = _entries_frames()
    ring = fake_ring([[(f, len(f), 0, 0, 0) for f in frames_]])
    ring.linktype = 1
    wanted: list[tuple[int, int, int, bytes, int, int]] = []
    chunks, n, _ = ring.read_encoded(1000, wanted=wanted)
    assert n == len(frames_) and b"".join(chunks) == python_bytes([[(f, len(f), 0, 0, 0) for f in frames_]])[0]
    got = {rec[3] for rec in wanted}
    assert got == set(frames_[:4]) | set(frames_[6:9]) | {frames_[-1]}  # DNS, DNS-looking, TCP, DNS over v6

    def entries(recs: list[tuple[int, int, int, bytes, int, int]]) -> list[str]:
        out: list[Entry] = []
        stage = DissectStage(seed=1, memory_cap=1 << 20, flow_cap=100, idle_timeout=5, emit=out.append)
        stage.feed(recs, [1, 1, 1, 1])
        stage.close()
        return sorted(repr((e.protocol, e.query_name, e.path)) for e in out)

    everything: list[tuple[int, int, int, bytes, int, int]] = []
    fake_ring([[(f, len(f), 0, 0, 0) for f in frames_]]).read_blocks(everything)
    assert entries(wanted) == entries(everything) and entries(wanted)
