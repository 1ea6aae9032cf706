"""kstap.formats.pcapng: what it writes, Wireshark reads back exactly (and so does kstap's reader)."""

from __future__ import annotations

import io
import platform
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kstap import __version__
from kstap.formats import pcapng
from kstap.formats.savefile import CaptureReader
from kstap.model import Interface, PacketRecord
from kstap.sinks.files import PcapngFiles

TS = 1_700_000_000_123_456_789
OS_NAME = f"{platform.system()} {platform.release()}"


def _write(path: Path, interfaces: list[Interface], records: list[PacketRecord], *, with_queue: bool = False,
           comment: str = "", application: str | None = None,
           counters: dict[int, pcapng.InterfaceCounters] | None = None) -> Path:
    parts = [pcapng.section_header(comment=comment, application=application)]
    parts += [pcapng.interface_description(i) for i in interfaces]
    parts += pcapng.enhanced_packets(records, with_queue=with_queue)
    parts += [pcapng.interface_statistics(if_id, c) for if_id, c in (counters or {}).items()]
    path.write_bytes(b"".join(parts))
    return path


def _capinfos_value(text: str, key: str) -> list[str]:
    """Values of ``Key: value`` (file) and ``Key = value`` (interface) lines of ``capinfos -M``."""
    return [line.strip()[len(key):].lstrip(" :=").strip()
            for line in text.splitlines() if line.strip().startswith(key)]


def test_section_header_names_application_os_and_hardware(tmp_path, frames, wireshark) -> None:
    pkt = frames.udp(payload=b"x" * 30)
    f = _write(tmp_path / "a.pcapng", [Interface("veth0")], [(TS, len(pkt), len(pkt), pkt, 0, 0)],
               comment="a comment")
    info = wireshark.capinfos(f)
    assert _capinfos_value(info, "Capture application") == [f"kstap {__version__}"]
    assert _capinfos_value(info, "Capture oper-sys") == [OS_NAME]
    assert _capinfos_value(info, "Capture hardware") == [platform.machine()]
    assert _capinfos_value(info, "Capture comment") == ["a comment"]
    assert CaptureReader(io.BytesIO(f.read_bytes())).shb_comments == []  # comments fill in while iterating
    reader = CaptureReader(io.BytesIO(f.read_bytes()))
    list(reader)
    assert reader.shb_comments == ["a comment"]


def test_section_header_custom_application(tmp_path, wireshark) -> None:
    f = _write(tmp_path / "a.pcapng", [Interface("veth0")], [], application="kstap-test 9")
    assert _capinfos_value(wireshark.capinfos(f), "Capture application") == ["kstap-test 9"]


def test_interface_name_filter_description_and_nanoseconds(tmp_path, frames, wireshark) -> None:
    ifaces = [Interface("eth9", filter="tcp and (port 80 or port 8080)", description="uplink"),
              Interface("lo", snaplen=128)]
    pkt = frames.tcp(dport=8080, payload=b"hello")
    records: list[PacketRecord] = [(TS, len(pkt), len(pkt), pkt, 0, 0), (TS + 1, len(pkt), len(pkt), pkt, 1, 0)]
    f = _write(tmp_path / "a.pcapng", ifaces, records)
    info = wireshark.capinfos(f)
    assert _capinfos_value(info, "Name") == ["eth9", "lo"]
    assert _capinfos_value(info, "Filter string") == ["tcp and (port 80 or port 8080)"]
    assert _capinfos_value(info, "Description") == ["uplink"]
    assert _capinfos_value(info, "Capture length") == ["262144", "128"]
    assert _capinfos_value(info, "Time precision") == ["nanoseconds (9)", "nanoseconds (9)"]
    assert _capinfos_value(info, "Operating system") == [OS_NAME, OS_NAME]
    rows = wireshark.fields(f, "frame.interface_id", "frame.interface_name", "frame.time_epoch", "tcp.dstport")
    assert rows == [["0", "eth9", "1700000000.123456789", "8080"], ["1", "lo", "1700000000.123456790", "8080"]]


def test_truncated_packets_keep_their_original_length(tmp_path, frames, wireshark) -> None:
    full = frames.udp(payload=b"z" * 1000)
    records: list[PacketRecord] = [(TS + i, n, len(full), full[:n], 0, 0) for i, n in enumerate((1, 2, 3, 4, 64))]
    f = _write(tmp_path / "t.pcapng", [Interface("veth0", snaplen=64)], records)
    rows = wireshark.fields(f, "frame.len", "frame.cap_len")
    assert rows == [[str(len(full)), str(n)] for n in (1, 2, 3, 4, 64)]
    back = [rec for rec, _ in CaptureReader(io.BytesIO(f.read_bytes()))]
    assert back == records


def test_queue_option_round_trips(tmp_path, frames, wireshark) -> None:
    pkt = frames.udp()
    records: list[PacketRecord] = [(TS + i, len(pkt), len(pkt), pkt, 0, w) for i, w in enumerate((0, 3, 1, 0xFFFFFFFF))]
    f = _write(tmp_path / "q.pcapng", [Interface("veth0")], records, with_queue=True)
    assert wireshark.fields(f, "frame.interface_queue") == [["0"], ["3"], ["1"], ["4294967295"]]
    got = list(CaptureReader(io.BytesIO(f.read_bytes())))
    assert [rec for rec, _ in got] == records
    assert [info.queue if info else None for _, info in got] == [0, 3, 1, 0xFFFFFFFF]


def test_without_queue_there_are_no_packet_options(tmp_path, frames, blocks) -> None:
    pkt = frames.udp()
    f = _write(tmp_path / "q.pcapng", [Interface("veth0")], [(TS, len(pkt), len(pkt), pkt, 0, 5)])
    epbs = [body for btype, body in blocks(f.read_bytes()) if btype == pcapng.BT_EPB]
    assert len(epbs) == 1 and len(epbs[0]) == 20 + len(pkt) + (-len(pkt) % 4)
    ((rec, info),) = list(CaptureReader(io.BytesIO(f.read_bytes())))
    assert info is None and rec[5] == 0


def _isb_counters(body: bytes, block_options) -> dict[str, int]:
    opts = block_options(body[12:])

    def u64(code: int) -> int:
        if code in (2, 3):  # isb_starttime/endtime: a timestamp, high 32 bits first
            hi, lo = struct.unpack("<II", opts[code][0])
            return (hi << 32) | lo
        return int(struct.unpack("<Q", opts[code][0])[0])  # counters: a plain uint64 (pcapng spec 4.6)

    names = {"start": 2, "end": 3, "ifrecv": 4, "ifdrop": 5, "filteraccept": 6, "osdrop": 7, "usrdeliv": 8}
    return {name: u64(code) for name, code in names.items()} | {"if_id": struct.unpack_from("<I", body)[0]}


def test_interface_statistics_counters(tmp_path, blocks, block_options, wireshark) -> None:
    counters = pcapng.InterfaceCounters(start_ns=TS, end_ns=TS + 5_000_000_000, received=2**40 + 7,
                                        dropped=13, delivered=1000)
    f = _write(tmp_path / "s.pcapng", [Interface("a"), Interface("b")], [],
               counters={1: counters})
    wireshark.read_ok(f)
    assert "Number of stat entries = 1" in wireshark.capinfos(f)
    (isb,) = [body for btype, body in blocks(f.read_bytes()) if btype == pcapng.BT_ISB]
    assert _isb_counters(isb, block_options) == {
        "if_id": 1, "start": TS, "end": TS + 5_000_000_000, "ifrecv": 2**40 + 7, "ifdrop": 13,
        "filteraccept": 2**40 + 7, "osdrop": 13, "usrdeliv": 1000,
    }
    reader = CaptureReader(io.BytesIO(f.read_bytes()))
    assert list(reader) == []
    (stat,) = reader.statistics
    assert (stat.if_id, stat.received, stat.dropped, stat.filter_accept, stat.os_drop, stat.delivered) == (
        1, 2**40 + 7, 13, 2**40 + 7, 13, 1000)


def test_pcapng_files_end_with_statistics_per_interface(tmp_path, frames, blocks, block_options,
                                                        wireshark) -> None:
    pkt = frames.udp(payload=b"p" * 100)
    ifaces = [Interface("veth0", filter="udp"), Interface("veth1", filter="udp")]
    counters = [pcapng.InterfaceCounters(0, 0, 10, 2, 9), pcapng.InterfaceCounters(0, 0, 4, 0, 4)]
    sink = PcapngFiles(str(tmp_path / "out.pcapng"), ifaces, counters=lambda: counters)
    sink.write([(TS, len(pkt), len(pkt), pkt, 0, 0), (TS + 1, 60, len(pkt), pkt[:60], 1, 0)])
    sink.write([(TS + 2, len(pkt), len(pkt), pkt, 0, 0)])
    assert sink.close()
    assert sink.close()  # closing twice is harmless
    data = (tmp_path / "out.pcapng").read_bytes()
    kinds = [btype for btype, _ in blocks(data)]
    assert kinds == [pcapng.BT_SHB, pcapng.BT_IDB, pcapng.BT_IDB] + [pcapng.BT_EPB] * 3 + [pcapng.BT_ISB] * 2
    isbs = [_isb_counters(body, block_options) for btype, body in blocks(data) if btype == pcapng.BT_ISB]
    assert [(s["if_id"], s["ifrecv"], s["ifdrop"], s["usrdeliv"]) for s in isbs] == [(0, 10, 2, 2), (1, 4, 0, 1)]
    assert all(s["start"] <= s["end"] for s in isbs)
    assert sink.packets_written == 3 and sink.bytes_written == len(data)
    rows = wireshark.fields(tmp_path / "out.pcapng", "frame.interface_name", "frame.len", "frame.cap_len")
    assert rows == [["veth0", str(len(pkt)), str(len(pkt))], ["veth1", str(len(pkt)), "60"],
                    ["veth0", str(len(pkt)), str(len(pkt))]]


def test_option_padding() -> None:
    assert pcapng.option(1, b"") == b"\x01\x00\x00\x00"
    assert pcapng.option(1, b"a") == b"\x01\x00\x01\x00a\0\0\0"
    assert pcapng.option(1, b"abcd") == b"\x01\x00\x04\x00abcd"
    assert pcapng.option(2, b"abcde") == b"\x02\x00\x05\x00abcde\0\0\0"


# -- property: whatever records go in come back out ------------------------------------------------
_records = st.lists(
    st.tuples(
        st.integers(0, 2**64 - 1),  # timestamp, ns
        st.binary(max_size=300),
        st.integers(0, 2**32 - 1),  # extra original length
        st.integers(0, 2),  # interface id
        st.integers(0, 2**32 - 1),  # worker
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(records=_records, with_queue=st.booleans(), names=st.lists(st.text(max_size=20), min_size=3, max_size=3))
def test_round_trip_through_capture_reader(records, with_queue: bool, names: list[str]) -> None:
    ifaces = [Interface(f"if{i}{n}", snaplen=262144, filter=n, description=n) for i, n in enumerate(names)]
    recs: list[PacketRecord] = [
        (ts, len(data), min(len(data) + extra, 2**32 - 1), data, ifid, worker if with_queue else 0)
        for ts, data, extra, ifid, worker in records
    ]
    stream = io.BytesIO()
    stream.write(pcapng.section_header(comment="c"))
    for i in ifaces:
        stream.write(pcapng.interface_description(i))
    stream.write(b"".join(pcapng.enhanced_packets(recs, with_queue=with_queue)))
    stream.write(pcapng.interface_statistics(0, pcapng.InterfaceCounters(1, 2, 3, 4, 5)))
    stream.seek(0)
    reader = CaptureReader(stream)
    got = list(reader)
    assert [rec for rec, _ in got] == recs
    if with_queue:
        assert [info.queue if info else None for _, info in got] == [r[5] for r in recs]
    else:
        assert all(info is None for _, info in got)
    assert reader.interfaces == ifaces
    assert reader.packets == len(recs)
    assert [(s.if_id, s.received, s.dropped, s.delivered) for s in reader.statistics] == [(0, 3, 4, 5)]


def test_enhanced_packets_decode_back_into_records_and_comments() -> None:
    recs = [(1_700_000_000_000_000_000 + i, 3 + i, 10 + i, b"abcdef"[: 3 + i], 0, 0) for i in range(3)]
    data = b"".join(pcapng.enhanced_packets(recs, comments={1: "kstap: flow id=1"}))
    assert pcapng.decode_epbs(data) == (recs, {1: "kstap: flow id=1"})
    assert pcapng.decode_epbs(data[:-4]) == (recs[:2], {1: "kstap: flow id=1"})  # a cut block ends it


@pytest.mark.parametrize("view", [False, True], ids=["bytes", "views"])
def test_a_note_goes_on_the_first_encoded_packet_at_or_after_its_time(view: bool) -> None:
    """An interface that came or went, on the C path: its comment on the first EPB stamped at or
    after it, joined with a flow comment that EPB already has as the records path joins them; no EPB
    that late leaves the chunks alone. The C path's chunks are views of the ring's output buffer."""
    recs = [(1000 + i, 3 + i, 9, bytes(range(3 + i)), 0, 0) for i in range(5)]
    raw = [b"".join(pcapng.enhanced_packets(recs[:2])),
           b"".join(pcapng.enhanced_packets(recs[2:], comments={0: "kstap: flow id=00000001 x"}))]
    chunks: list[bytes | memoryview] = [memoryview(bytearray(c)) if view else c for c in raw]
    before = list(chunks)
    assert not pcapng.comment_first_at(chunks, 1005, "late") and chunks == before
    assert pcapng.comment_first_at(chunks, 1002, "kstap: veth1 appeared")
    assert pcapng.comment_first_at(chunks, 1001, "kstap: veth0 vanished")
    data = pcapng.section_header() + pcapng.interface_description(Interface("x")) + b"".join(chunks)
    got = [(rec[:4], info.comments if info else []) for rec, info in CaptureReader(io.BytesIO(data))]
    assert [rec for rec, _ in got] == [r[:4] for r in recs]
    assert [c for _, c in got] == [[], ["kstap: veth0 vanished"],
                                   ["kstap: veth1 appeared; kstap: flow id=00000001 x"], [], []]
