"""kstap.repair and ``kstap repair``: every complete block kept, the cut tail dropped, nothing invented."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kstap.errors import KstapError, UsageError
from kstap.formats import pcapng
from kstap.formats.savefile import CaptureFormatError, CaptureReader
from kstap.model import Interface, PacketRecord
from kstap.repair import default_output, repair, scan

T0 = 1_700_000_000 * 10**9


def _frames(frames, n: int = 40) -> list[bytes]:
    return frames.mixed(n)


def kstap_file(frames, *, isb: bool = True) -> bytes:
    recs: list[PacketRecord] = [(T0 + i * 1000, len(f), len(f), f, i % 2, 0) for i, f in enumerate(_frames(frames))]
    parts = [pcapng.section_header(comment="run"), pcapng.interface_description(Interface("a")),
             pcapng.interface_description(Interface("b")), *pcapng.enhanced_packets(recs, comments={3: "flow"})]
    if isb:
        parts.append(pcapng.interface_statistics(0, pcapng.InterfaceCounters(T0, T0 + 1, 40, 1, 20)))
    return b"".join(parts)


def read_all(data: bytes) -> tuple[int, str | None]:
    n = 0
    try:
        for _ in CaptureReader(io.BytesIO(data), "f"):
            n += 1
    except CaptureFormatError as exc:
        return n, str(exc)
    return n, None


def complete_epbs(data: bytes, cut: int) -> int:
    """EPBs wholly inside data[:cut], by an independent walk."""
    pos = n = 0
    while pos + 8 <= cut:
        btype, length = struct.unpack_from("<II", data, pos)
        if pos + length > cut:
            break
        n += btype == 6
        pos += length
    return n


def test_an_intact_file_is_copied_whole(tmp_path: Path, frames) -> None:
    data = kstap_file(frames)
    src = tmp_path / "ok.pcapng"
    src.write_bytes(data)
    r = repair(str(src))
    assert r.intact and r.packets == 40 and r.statistics and r.bytes_kept == len(data)
    assert r.output == str(tmp_path / "ok.repaired.pcapng")
    assert Path(r.output).read_bytes() == data
    assert os.stat(r.output).st_mode & 0o777 == 0o600


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_pcapng_cut_anywhere_keeps_exactly_its_complete_packets(frames, draw: st.DataObject) -> None:
    data = kstap_file(frames, isb=False)
    first_packet = len(pcapng.section_header(comment="run")) + 2 * len(pcapng.interface_description(Interface("a")))
    cut = draw.draw(st.integers(first_packet, len(data)))
    r = scan(data[:cut])
    kept = data[: r.bytes_kept]
    assert r.packets == complete_epbs(data, cut)
    assert read_all(kept) == (r.packets, None)
    assert r.bytes_dropped == cut - r.bytes_kept
    assert (r.reason is None) == (r.bytes_dropped == 0)
    assert not r.statistics


@settings(max_examples=150, deadline=None)
@given(st.data(), st.booleans(), st.booleans())
def test_a_pcap_cut_anywhere_keeps_exactly_its_complete_packets(frames, pcap_bytes, draw: st.DataObject,
                                                                 nano: bool, big: bool) -> None:
    packets = [(T0 + i, f) for i, f in enumerate(_frames(frames, 20))]
    data = pcap_bytes(packets, nano=nano, big_endian=big)
    cut = draw.draw(st.integers(24, len(data)))
    r = scan(data[:cut])
    assert read_all(data[: r.bytes_kept]) == (r.packets, None)
    whole, pos = 0, 24
    for _, f in packets:
        pos += 16 + len(f)
        whole += pos <= cut
    assert r.packets == whole


def test_tshark_reads_a_repaired_file_without_a_warning(tmp_path: Path, frames, wireshark) -> None:
    data = kstap_file(frames)
    for cut in (len(data) - 5, len(data) // 2 + 3, 700):
        src = tmp_path / f"cut{cut}.pcapng"
        src.write_bytes(data[:cut])
        r = wireshark.run("tshark", "-n", "-r", str(src))
        assert "cut short" in r.stderr  # what repair is for
        out = tmp_path / f"fixed{cut}.pcapng"
        rep = repair(str(src), str(out))
        assert len(wireshark.read_ok(out)) == rep.packets == complete_epbs(data, cut)


def test_damage_in_the_middle_stops_the_copy_there(frames) -> None:
    data = bytearray(kstap_file(frames))
    shb_idb = len(pcapng.section_header(comment="run")) + 2 * len(pcapng.interface_description(Interface("a")))
    second = shb_idb + struct.unpack_from("<I", data, shb_idb + 4)[0]
    struct.pack_into("<I", data, second + 4, 13)  # the second packet's length field
    r = scan(bytes(data))
    assert r.packets == 1 and r.bytes_kept == second and "corrupt block (length 13)" in (r.reason or "")
    struct.pack_into("<I", data, second + 4, 2 << 30)
    assert scan(bytes(data)).packets == 1


def test_a_packet_naming_an_unknown_interface_ends_the_copy(frames) -> None:
    recs: list[PacketRecord] = [(T0, 4, 4, b"abcd", 0, 0), (T0 + 1, 4, 4, b"efgh", 5, 0)]
    data = pcapng.section_header() + pcapng.interface_description(Interface("a")) + \
        b"".join(pcapng.enhanced_packets(recs))
    r = scan(data)
    assert r.packets == 1 and "interface 5" in (r.reason or "")


def test_a_cut_section_with_a_length_gets_length_unknown(tmp_path: Path) -> None:
    shb = bytearray(pcapng.section_header())
    idb = pcapng.interface_description(Interface("a"))
    epb = b"".join(pcapng.enhanced_packets([(T0, 8, 8, b"12345678", 0, 0)] * 3))
    struct.pack_into("<q", shb, 16, len(idb) + len(epb))  # a writer that states the section length
    src = tmp_path / "len.pcapng"
    src.write_bytes(bytes(shb) + idb + epb[:-10])
    r = repair(str(src), str(tmp_path / "out.pcapng"))
    assert r.section_length_reset and r.packets == 2
    assert struct.unpack_from("<q", (tmp_path / "out.pcapng").read_bytes(), 16)[0] == -1


def test_not_a_capture_and_bad_paths(tmp_path: Path) -> None:
    bad = tmp_path / "text.pcapng"
    bad.write_bytes(b"hello world, not a capture")
    with pytest.raises(KstapError, match="not a pcap or pcapng"):
        repair(str(bad))
    with pytest.raises(UsageError, match="does not exist"):
        repair(str(tmp_path / "missing.pcapng"))
    with pytest.raises(UsageError, match="another file"):
        repair(str(bad), str(bad))
    with pytest.raises(KstapError, match="section header"):
        scan(pcapng.section_header()[:20])
    assert default_output("/a/b/cap.pcap") == "/a/b/cap.repaired.pcap"


def test_the_command(tmp_path: Path, frames, cli) -> None:
    data = kstap_file(frames, isb=False)
    src = tmp_path / "killed.pcapng"
    src.write_bytes(data[:-7])
    res = cli("repair", str(src), "-o", str(tmp_path / "fixed.pcapng"))
    assert res.code == 0, res.err
    assert "kept 39 packets" in res.err and "dropped the last" in res.err and "no statistics block" in res.err
    assert read_all((tmp_path / "fixed.pcapng").read_bytes()) == (39, None)
    res = cli("repair", str(tmp_path / "fixed.pcapng"), "-o", str(tmp_path / "again.pcapng"))
    assert res.code == 0 and "is intact: 39 packets" in res.err
    res = cli("repair", str(tmp_path / "nope"))
    assert res.code == 2 and res.err.startswith("kstap: error:")


def test_the_command_as_a_process(tmp_path: Path, frames) -> None:
    """Exit code and output of the real ``python -m kstap repair`` (no traceback on bad input)."""
    bad = tmp_path / "x.pcapng"
    bad.write_bytes(b"\0" * 3)
    r = subprocess.run([sys.executable, "-m", "kstap", "repair", str(bad)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "not a pcap or pcapng" in r.stderr
