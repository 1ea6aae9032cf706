"""kstap.formats.savefile: every pcap/pcapng flavour reads right; damage is reported, never a crash."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kstap.formats import pcapng
from kstap.formats.savefile import CaptureFormatError, CaptureReader
from kstap.model import Interface, PacketRecord

T0 = 1_700_000_000_000_000_000


def _read(data: bytes) -> tuple[CaptureReader, list[PacketRecord]]:
    reader = CaptureReader(io.BytesIO(data), "f")
    return reader, [rec for rec, _ in reader]


def _timed(frames) -> list[tuple[int, bytes]]:
    """Packets with nanosecond timestamps that are not whole microseconds."""
    return [(T0 + i * 1_234_567_891 + 789, p) for i, p in enumerate(frames.mixed(24))]


def _kstap_pcapng(packets: list[tuple[int, bytes]], *, snaplen: int = 262144, with_queue: bool = False) -> bytes:
    recs: list[PacketRecord] = [(ts, min(len(p), snaplen), len(p), p[:snaplen], 0, i % 3 if with_queue else 0)
                                for i, (ts, p) in enumerate(packets)]
    return b"".join([pcapng.section_header(), pcapng.interface_description(Interface("veth0", snaplen=snaplen)),
                     *pcapng.enhanced_packets(recs, with_queue=with_queue),
                     pcapng.interface_statistics(0, pcapng.InterfaceCounters(0, 1, 2, 3, 4))])


# -- classic pcap --------------------------------------------------------------------------------------
@pytest.mark.parametrize("nano", [True, False])
@pytest.mark.parametrize("big_endian", [False, True])
def test_classic_pcap_by_hand(pcap_bytes, frames, nano: bool, big_endian: bool) -> None:
    packets = _timed(frames)
    reader, recs = _read(pcap_bytes(packets, nano=nano, big_endian=big_endian, snaplen=65535, linktype=1))
    assert reader.format == "pcap"
    assert reader.interfaces == [Interface("pcap", 1, 65535)]
    want_ts = [ts if nano else ts // 1000 * 1000 for ts, _ in packets]
    assert recs == [(ts, len(p), len(p), p, 0, 0) for ts, (_, p) in zip(want_ts, packets, strict=True)]
    assert reader.packets == len(packets)


def test_classic_pcap_truncated_records(pcap_bytes, frames) -> None:
    p = frames.udp(payload=b"x" * 500)
    _, recs = _read(pcap_bytes([(T0, p[:64], len(p))], nano=True))
    assert recs == [(T0, 64, len(p), p[:64], 0, 0)]


@pytest.mark.parametrize("nano", [True, False])
def test_classic_pcap_from_dpkt(tmp_path: Path, frames, nano: bool) -> None:
    path = tmp_path / "d.pcap"
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh, snaplen=9000, linktype=dpkt.pcap.DLT_EN10MB, nano=nano)
        for i, p in enumerate(frames.mixed(10)):
            w.writepkt(p, ts=1_700_000_000 + i)  # whole seconds: no float rounding
    reader = CaptureReader(io.BytesIO(path.read_bytes()), str(path))
    recs = [rec for rec, _ in reader]
    assert [r[0] for r in recs] == [T0 + i * 1_000_000_000 for i in range(10)]
    assert [r[3] for r in recs] == frames.mixed(10)
    assert reader.interfaces[0].snaplen == 9000


def test_classic_pcap_other_link_type(pcap_bytes, frames) -> None:
    raw_ip = frames.udp()[14:]
    reader, recs = _read(pcap_bytes([(T0, raw_ip)], linktype=101))
    assert reader.interfaces[0].linktype == 101 and recs[0][3] == raw_ip


# -- pcapng written by Wireshark's tools ---------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "resolution_ns"), [("pcapng", 1), ("pcap", 1000), ("nsecpcap", 1)])
def test_files_converted_by_editcap(tmp_path: Path, frames, wireshark, fmt: str, resolution_ns: int) -> None:
    packets = _timed(frames)
    ours = tmp_path / "ours.pcapng"
    ours.write_bytes(_kstap_pcapng(packets, snaplen=200))
    theirs = wireshark.editcap(ours, tmp_path / f"theirs.{fmt}", fmt)
    reader = CaptureReader(io.BytesIO(theirs.read_bytes()), str(theirs))
    recs = [rec for rec, _ in reader]
    assert reader.format == ("pcapng" if fmt == "pcapng" else "pcap")
    assert [r[0] for r in recs] == [ts // resolution_ns * resolution_ns for ts, _ in packets]
    assert [(r[1], r[2], r[3]) for r in recs] == [(min(len(p), 200), len(p), p[:200]) for _, p in packets]
    if fmt == "pcapng":
        assert reader.interfaces[0].name == "veth0"
        assert reader.interfaces[0].snaplen == 200


def test_wireshark_pcapng_with_packet_comment(tmp_path: Path, frames, wireshark) -> None:
    packets = _timed(frames)[:3]
    ours = tmp_path / "ours.pcapng"
    ours.write_bytes(_kstap_pcapng(packets))
    commented = tmp_path / "c.pcapng"
    r = wireshark.run("editcap", "-a", "2:hello there", str(ours), str(commented))
    assert r.returncode == 0, r.stderr
    got = list(CaptureReader(io.BytesIO(commented.read_bytes())))
    assert [rec[3] for rec, _ in got] == [p for _, p in packets]
    infos = [info for _, info in got]
    assert infos[1] is not None and infos[1].comments == ["hello there"]


def _be_pcapng(packets: list[tuple[int, bytes]], tsresol: int) -> bytes:
    """A big-endian pcapng section, by hand (Wireshark only writes the host's byte order)."""

    def block(btype: int, body: bytes) -> bytes:
        return struct.pack(">II", btype, len(body) + 12) + body + struct.pack(">I", len(body) + 12)

    def opt(code: int, value: bytes) -> bytes:
        return struct.pack(">HH", code, len(value)) + value + b"\0" * (-len(value) % 4)

    shb = block(pcapng.BT_SHB, struct.pack(">IHHq", pcapng.BYTE_ORDER_MAGIC, 1, 0, -1))
    idb = block(pcapng.BT_IDB, struct.pack(">HHI", 1, 0, 1500) + opt(2, b"be0") + opt(9, bytes([tsresol]))
                + opt(0, b""))
    epbs = b""
    for ts, p in packets:
        ticks = ts * (10 ** (tsresol & 0x7F) if not tsresol & 0x80 else 1 << (tsresol & 0x7F)) // 10**9
        epbs += block(pcapng.BT_EPB, struct.pack(">IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(p), len(p))
                      + p + b"\0" * (-len(p) % 4))
    return shb + idb + epbs


@pytest.mark.parametrize(("tsresol", "step"), [(9, 1), (6, 1000), (3, 1_000_000), (0x80 | 30, None)])
def test_big_endian_pcapng_and_other_resolutions(frames, tsresol: int, step: int | None) -> None:
    packets = [(T0 + i * 1_000_000_000, p) for i, p in enumerate(frames.mixed(5))]
    reader, recs = _read(_be_pcapng(packets, tsresol))
    assert reader.interfaces == [Interface("be0", 1, 1500)]
    assert [r[3] for r in recs] == [p for _, p in packets]
    assert [r[0] for r in recs] == [ts for ts, _ in packets]  # whole seconds survive every resolution


def test_multiple_sections_and_interfaces(frames) -> None:
    p = frames.udp()
    one = _kstap_pcapng([(T0, p)])
    two = b"".join([pcapng.section_header(), pcapng.interface_description(Interface("a")),
                    pcapng.interface_description(Interface("b", filter="udp")),
                    *pcapng.enhanced_packets([(T0 + 5, len(p), len(p), p, 1, 0)])])
    reader, recs = _read(one + two)
    assert [(r[0], r[4]) for r in recs] == [(T0, 0), (T0 + 5, 1)]
    assert [i.name for i in reader.interfaces] == ["a", "b"]  # the current section's
    assert reader.interfaces[1].filter == "udp"


def test_unknown_blocks_are_skipped(frames) -> None:
    p = frames.udp()
    data = _kstap_pcapng([(T0, p)])
    nrb = struct.pack("<II", 4, 16) + b"\0\0\0\0" + struct.pack("<I", 16)  # name resolution block
    shb_idb_len = len(pcapng.section_header()) + len(pcapng.interface_description(Interface("veth0")))
    data = data[:shb_idb_len] + nrb + data[shb_idb_len:]
    _, recs = _read(data)
    assert [r[3] for r in recs] == [p]


# -- damage ---------------------------------------------------------------------------------------------
def _packet_ends_pcap(packets: list[tuple[int, bytes]]) -> list[int]:
    ends, pos = [], 24
    for _, p in packets:
        pos += 16 + len(p)
        ends.append(pos)
    return ends


def _block_ends(data: bytes) -> list[tuple[int, bool]]:
    """(end offset, is a packet) for each block."""
    out, pos = [], 0
    while pos < len(data):
        btype, length = struct.unpack_from("<II", data, pos)
        pos += length
        out.append((pos, btype == pcapng.BT_EPB))
    return out


def test_truncated_pcap_at_every_offset(pcap_bytes, frames) -> None:
    packets = _timed(frames)[:6]
    data = pcap_bytes(packets)
    ends = _packet_ends_pcap(packets)
    for cut in range(len(data)):
        whole = sum(1 for e in ends if e <= cut)
        if cut < 24:
            with pytest.raises(CaptureFormatError) as info:
                _read(data[:cut])
            assert info.value.packets_ok == 0
            continue
        reader = CaptureReader(io.BytesIO(data[:cut]), "f")
        got: list[PacketRecord] = []
        if cut == 24 or cut in ends:
            got = [rec for rec, _ in reader]
            assert len(got) == whole, cut
            continue
        with pytest.raises(CaptureFormatError) as info:
            for rec, _ in reader:
                got.append(rec)
        assert info.value.packets_ok == whole == len(got), cut
        assert "truncated" in str(info.value)


def test_truncated_pcapng_at_every_offset(frames) -> None:
    data = _kstap_pcapng(_timed(frames)[:5], with_queue=True)
    ends = _block_ends(data)
    for cut in range(len(data)):
        whole = sum(1 for e, is_pkt in ends if is_pkt and e <= cut)
        at_boundary = cut in {e for e, _ in ends}
        try:
            reader = CaptureReader(io.BytesIO(data[:cut]), "f")
        except CaptureFormatError as exc:
            assert cut < 4 and exc.packets_ok == 0
            continue
        got: list[PacketRecord] = []
        if at_boundary:
            got = [rec for rec, _ in reader]
            assert len(got) == whole
            continue
        with pytest.raises(CaptureFormatError) as info:
            for rec, _ in reader:
                got.append(rec)
        assert info.value.packets_ok == whole == len(got), cut


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"abc", b"hello world, not a capture\n", b"\x7fELF\x02\x01\x01" + b"\0" * 60,
     b"\xd4\xc3\xb2\xa1" + b"\0" * 10],  # pcap magic with a short header
)
def test_not_a_capture(content: bytes) -> None:
    with pytest.raises(CaptureFormatError) as info:
        _read(content)
    assert info.value.packets_ok == 0
    assert str(info.value).startswith("f: ")


def _corrupt_at(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def test_garbage_pcapng_lengths(frames) -> None:
    data = _kstap_pcapng(_timed(frames)[:4])
    ends = _block_ends(data)
    third_epb = ends[3][0]  # SHB, IDB, EPB, EPB | EPB ...
    for bad in (0, 8, 13, 1 << 30, 0xFFFFFFFF, struct.unpack_from("<I", data, third_epb + 4)[0] + 4):
        damaged = _corrupt_at(data, third_epb + 4, struct.pack("<I", bad))
        with pytest.raises(CaptureFormatError) as info:
            _read(damaged)
        assert info.value.packets_ok == 2, bad


def test_garbage_epb_captured_length(frames) -> None:
    data = _kstap_pcapng(_timed(frames)[:3])
    first_epb = _block_ends(data)[1][0]
    damaged = _corrupt_at(data, first_epb + 8 + 12, struct.pack("<I", 100_000))
    with pytest.raises(CaptureFormatError, match="captured length") as info:
        _read(damaged)
    assert info.value.packets_ok == 0


def test_epb_naming_a_missing_interface(frames) -> None:
    data = _kstap_pcapng(_timed(frames)[:3])
    second_epb = _block_ends(data)[2][0]
    damaged = _corrupt_at(data, second_epb + 8, struct.pack("<I", 7))
    with pytest.raises(CaptureFormatError, match="interface 7") as info:
        _read(damaged)
    assert info.value.packets_ok == 1


def test_bad_byte_order_magic(frames) -> None:
    data = _kstap_pcapng(_timed(frames)[:1])
    with pytest.raises(CaptureFormatError, match="byte-order"):
        _read(_corrupt_at(data, 8, b"\0\0\0\0"))


def test_garbage_pcap_captured_length(pcap_bytes, frames) -> None:
    packets = _timed(frames)[:3]
    data = pcap_bytes(packets)
    second = _packet_ends_pcap(packets)[0]
    with pytest.raises(CaptureFormatError, match="corrupt") as info:
        _read(_corrupt_at(data, second + 8, struct.pack("<I", 0xFFFFFFF0)))
    assert info.value.packets_ok == 1


# -- property: mutated files fail only with CaptureFormatError ------------------------------------------
@pytest.fixture(scope="session")
def samples(frames, pcap_bytes) -> list[bytes]:
    packets = [(T0 + i * 1000 + 7, p) for i, p in enumerate(frames.mixed(8))]
    return [
        _kstap_pcapng(packets, with_queue=True),
        _kstap_pcapng(packets, snaplen=50),
        pcap_bytes(packets),
        pcap_bytes(packets, nano=False, big_endian=True),
        _be_pcapng(packets, 6),
    ]


def _mutate(draw: st.DataObject, data: bytearray) -> bytes:
    for _ in range(draw.draw(st.integers(1, 8))):
        kind = draw.draw(st.sampled_from(["byte", "word", "cut", "insert", "delete"]))
        pos = draw.draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "byte" and data:
            data[pos] = draw.draw(st.integers(0, 255))
        elif kind == "word" and len(data) >= 4:
            pos = min(pos, len(data) - 4) & ~3
            value = draw.draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 20, 28, 32, 0x7FFFFFFF,
                                               0xFFFFFFFF, 0x0A0D0D0A, 0x1A2B3C4D, None]))
            if value is None:
                value = draw.draw(st.integers(0, 2**32 - 1))
            data[pos:pos + 4] = struct.pack(draw.draw(st.sampled_from(["<I", ">I"])), value)
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw.draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw.draw(st.integers(1, 16))]
    return bytes(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutations_raise_only_capture_format_errors(samples: list[bytes], data: st.DataObject) -> None:
    mutated = _mutate(data, bytearray(data.draw(st.sampled_from(samples))))
    reader: CaptureReader | None = None
    got: list[PacketRecord] = []
    try:
        reader = CaptureReader(io.BytesIO(mutated), "m")
        for rec, _info in reader:
            got.append(rec)
            ts, caplen, _origlen, payload, if_id, worker = rec
            assert caplen == len(payload), "a record's captured length is its data's length"
            assert ts >= 0 and worker >= 0
            assert if_id < len(reader.interfaces)
        assert reader.packets == len(got)
    except CaptureFormatError as exc:
        assert exc.packets_ok == len(got)


def _framed(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


_BLOCK_TYPES = [pcapng.BT_IDB, pcapng.BT_EPB, pcapng.BT_SPB, pcapng.BT_PB, pcapng.BT_ISB, 4, 0x0BAD]


@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_well_framed_garbage_blocks_raise_only_capture_format_errors(data: st.DataObject) -> None:
    """Blocks whose length fields agree but whose bodies are nonsense (too short, bad options...)."""
    parts = [pcapng.section_header(), pcapng.interface_description(Interface("veth0", snaplen=64))]
    for _ in range(data.draw(st.integers(1, 6))):
        btype = data.draw(st.sampled_from(_BLOCK_TYPES))
        body = data.draw(st.binary(max_size=48))
        parts.append(_framed(btype, body))
    reader = CaptureReader(io.BytesIO(b"".join(parts)), "g")
    got: list[PacketRecord] = []
    try:
        for rec, _info in reader:
            got.append(rec)
            assert rec[1] == len(rec[3]), "a record's captured length is its data's length"
            assert rec[4] < len(reader.interfaces)
    except CaptureFormatError as exc:
        assert exc.packets_ok == len(got)


def _isb_section(application: str, counter: bytes) -> bytes:
    """A section (SHB naming ``application``, one IDB) and one ISB whose isb_ifrecv is ``counter``."""
    shb = pcapng._block(pcapng.BT_SHB, struct.pack("<IHHq", pcapng.BYTE_ORDER_MAGIC, 1, 0, -1)
                        + pcapng._options([pcapng.option(pcapng.SHB_USERAPPL, application.encode())]))
    idb = pcapng.interface_description(Interface("veth0"))
    isb = pcapng._block(pcapng.BT_ISB, struct.pack("<III", 0, 0, 0)
                        + pcapng._options([pcapng.option(pcapng.ISB_IFRECV, counter)]))
    return shb + idb + isb


@pytest.mark.parametrize(("application", "counter", "expected"), [
    ("Dumpcap (Wireshark) 4.0.17", struct.pack("<Q", 40000), 40000),  # the spec: one uint64
    ("Dumpcap (Wireshark) 4.0.17", struct.pack("<Q", 40000 << 32), 40000 << 32),  # never guessed at
    ("kstap 0.1.0", struct.pack("<Q", 40000), 40000),  # kstap now
    ("kstap 0.1.0", struct.pack("<II", 0, 40000), 40000),  # kstap before: high 32 bits first
    ("kstap 0.1.0", struct.pack("<Q", 2**40 + 7), 2**40 + 7),
])
def test_isb_counters_in_section_byte_order(application: str, counter: bytes, expected: int) -> None:
    reader = CaptureReader(io.BytesIO(_isb_section(application, counter)))
    assert list(reader) == []
    assert [s.received for s in reader.statistics] == [expected]
    assert reader.application == application
