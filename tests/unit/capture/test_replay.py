"""kstap.capture.replay: --read keeps what libpcap's filter keeps, truncates to -s, paces by timestamps."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from kstap.capture.replay import BATCH, ReplaySource
from kstap.errors import ExitCode, KstapError, UsageError
from kstap.formats import pcapng
from kstap.formats.savefile import CaptureReader
from kstap.model import Interface, PacketRecord

T0 = 1_700_000_000_000_000_000

EXPRESSIONS = [
    "",
    "tcp port 80",
    "udp",
    "tcp and (port 80 or port 8080)",
    "host 10.1.2.3 and not port 22",
    "icmp",
    "ip6",
    "arp",
    "greater 300",
    "udp port 53 or icmp",
]


def _drain(src: ReplaySource) -> list[PacketRecord]:
    out: list[PacketRecord] = []
    while not src.exhausted:
        out.extend(src.read(100))
    src.close()
    return out


@pytest.fixture
def mixed_pcap(tmp_path: Path, frames, pcap) -> Path:
    packets = [(T0 + i * 1_000_001, p) for i, p in enumerate(frames.mixed(96))]
    return pcap(tmp_path / "mixed.pcap", packets, nano=True)


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_filter_keeps_what_tcpdump_keeps(tmp_path: Path, mixed_pcap: Path, expression: str, wireshark) -> None:
    filtered = tmp_path / "tcpdump.pcap"
    r = wireshark.run("tcpdump", "--time-stamp-precision=nano", "-r", str(mixed_pcap), "-w", str(filtered),
                      expression)
    assert r.returncode == 0, r.stderr
    want = [rec for rec, _ in CaptureReader(io.BytesIO(filtered.read_bytes()))]
    got = _drain(ReplaySource(str(mixed_pcap), expression))
    assert got == want
    assert 0 < len(got) <= 96


@pytest.mark.parametrize(
    ("expression", "display_filter"),
    [("udp port 53", "udp.port == 53"), ("tcp port 8080 or tcp port 22", "tcp.port == 8080 or tcp.port == 22"),
     ("icmp", "icmp")],
)
def test_filter_count_matches_tshark(mixed_pcap: Path, expression: str, display_filter: str, wireshark) -> None:
    got = _drain(ReplaySource(str(mixed_pcap), expression))
    assert len(got) == wireshark.count(mixed_pcap, display_filter) > 0


def test_stats_count_what_passed(mixed_pcap: Path) -> None:
    src = ReplaySource(str(mixed_pcap), "tcp")
    got = _drain(src)
    (stats,) = src.stats()
    assert stats.received == stats.delivered == len(got) == 36
    assert stats.dropped == 0


def test_batches_are_bounded(tmp_path: Path, frames, pcap) -> None:
    p = frames.udp()
    path = pcap(tmp_path / "many.pcap", [(T0 + i, p) for i in range(BATCH + 10)])
    src = ReplaySource(str(path), "")
    assert len(src.read(0)) == BATCH
    assert not src.exhausted
    assert len(src.read(0)) == 10
    assert src.exhausted
    assert src.read(0) == []
    src.close()


def test_snaplen_truncates_after_filtering(tmp_path: Path, frames, pcap) -> None:
    big = frames.udp(dport=53, payload=b"\0" * 200 + b"MARK")
    small = frames.udp(dport=53, payload=b"tiny")
    path = pcap(tmp_path / "s.pcap", [(T0, big), (T0 + 1, small), (T0 + 2, big)], snaplen=65535)
    src = ReplaySource(str(path), "udp[208:4] = 0x4d41524b", snaplen=60)  # "MARK", past the snaplen
    assert src.interfaces == [Interface("pcap", 1, 60, "udp[208:4] = 0x4d41524b")]
    got = _drain(src)
    assert got == [(T0, 60, len(big), big[:60], 0, 0), (T0 + 2, 60, len(big), big[:60], 0, 0)]


def test_snaplen_larger_than_packets_changes_nothing(tmp_path: Path, frames, pcap) -> None:
    p = frames.udp(payload=b"x" * 10)
    path = pcap(tmp_path / "s.pcap", [(T0, p)], snaplen=65535)
    src = ReplaySource(str(path), "", snaplen=1000)
    assert src.interfaces[0].snaplen == 1000
    assert _drain(src) == [(T0, len(p), len(p), p, 0, 0)]


def test_filter_uses_the_original_length_of_truncated_records(tmp_path: Path, frames, pcap) -> None:
    p = frames.udp(payload=b"y" * 1400)
    path = pcap(tmp_path / "t.pcap", [(T0, p[:64], len(p)), (T0 + 1, frames.udp(), 42)])
    got = _drain(ReplaySource(str(path), "greater 1000"))
    assert got == [(T0, 64, len(p), p[:64], 0, 0)]


def test_filter_per_interface_link_type(tmp_path: Path, frames) -> None:
    """A pcapng with an Ethernet and a raw-IP interface: the filter is compiled for each."""
    eth = frames.udp(dport=53)
    raw = frames.udp(dport=53)[14:]
    tcp_raw = frames.tcp()[14:]
    records: list[PacketRecord] = [(T0, len(eth), len(eth), eth, 0, 0), (T0 + 1, len(raw), len(raw), raw, 1, 0),
                                   (T0 + 2, len(tcp_raw), len(tcp_raw), tcp_raw, 1, 0)]
    path = tmp_path / "two.pcapng"
    path.write_bytes(b"".join([pcapng.section_header(), pcapng.interface_description(Interface("veth0")),
                               pcapng.interface_description(Interface("tun0", linktype=101)),
                               *pcapng.enhanced_packets(records)]))
    src = ReplaySource(str(path), "udp port 53")
    got = _drain(src)
    assert got == records[:2]
    assert [(i.name, i.linktype, i.filter) for i in src.interfaces] == [("veth0", 1, "udp port 53"),
                                                                         ("tun0", 101, "udp port 53")]


# -- errors ---------------------------------------------------------------------------------------
def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file") as info:
        ReplaySource(str(tmp_path / "nope.pcap"), "")
    assert info.value.code == ExitCode.USAGE and info.value.hint


def test_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="Is a directory"):
        ReplaySource(str(tmp_path), "")


def test_not_a_capture_is_a_runtime_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not packets\n")
    with pytest.raises(KstapError) as info:
        ReplaySource(str(path), "")
    assert type(info.value) is KstapError and info.value.code == ExitCode.RUNTIME
    assert "not a pcap or pcapng file" in info.value.message and info.value.hint


def test_damaged_file_keeps_the_packets_before_the_damage(tmp_path: Path, frames, pcap_bytes) -> None:
    packets = [(T0 + i, frames.udp(payload=bytes([i]) * 50)) for i in range(10)]
    data = pcap_bytes(packets)
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[: 24 + 6 * (16 + 92) + 30])
    src = ReplaySource(str(path), "")
    got = _drain(src)
    assert [r[3] for r in got] == [p for _, p in packets[:6]]
    assert src.error is not None and src.error.packets_ok == 6


def test_bad_filter_for_the_file_link_type(tmp_path: Path, frames, pcap) -> None:
    path = pcap(tmp_path / "raw.pcap", [(T0, frames.udp()[14:])], linktype=101)
    src = ReplaySource(str(path), "ether host 02:00:00:00:00:01")
    with pytest.raises(UsageError, match="invalid BPF filter"):
        src.read(0)
    src.close()


# -- --realtime -----------------------------------------------------------------------------------
class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 500.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


OFFSETS_S = [0.0, 0.5, 0.6, 3.1, 3.1, 3.25, 10.0]


def test_realtime_paces_by_timestamps(tmp_path: Path, frames, pcap) -> None:
    p = frames.udp()
    path = pcap(tmp_path / "rt.pcap", [(T0 + round(o * 1e9), p) for o in OFFSETS_S])
    t = FakeTime()
    src = ReplaySource(str(path), "", realtime=True, clock=t.clock, sleep=t.sleep)
    delivered: list[tuple[float, float]] = []  # (packet offset, clock offset when handed over)
    reads = 0
    while not src.exhausted:
        reads += 1
        assert reads < 1000
        for rec in src.read(100):
            delivered.append(((rec[0] - T0) / 1e9, t.now - 500.0))
    src.close()
    assert [d[0] for d in delivered] == pytest.approx(OFFSETS_S)
    for due, at in delivered:
        assert at == pytest.approx(due, abs=1e-6), "handed over when due, not before, not after"
    assert all(s <= 1.0 for s in t.sleeps), "sleeps in slices of at most a second (stays responsive)"
    assert sum(t.sleeps) == pytest.approx(10.0)


def test_realtime_hands_over_one_packet_per_read(tmp_path: Path, frames, pcap) -> None:
    p = frames.udp()
    path = pcap(tmp_path / "rt.pcap", [(T0, p), (T0, p), (T0, p)])
    t = FakeTime()
    src = ReplaySource(str(path), "", realtime=True, clock=t.clock, sleep=t.sleep)
    assert [len(src.read(0)) for _ in range(3)] == [1, 1, 1]
    assert t.sleeps == []
    src.close()


def test_realtime_filtered_packets_do_not_wait(tmp_path: Path, frames, pcap) -> None:
    """Only packets that pass the filter are paced: a skipped packet's timestamp costs no sleep."""
    path = pcap(tmp_path / "rt.pcap", [(T0, frames.udp(dport=53)), (T0 + 5 * 10**9, frames.tcp()),
                                       (T0 + 7 * 10**9, frames.udp(dport=53))])
    t = FakeTime()
    src = ReplaySource(str(path), "udp", realtime=True, clock=t.clock, sleep=t.sleep)
    got = _drain(src)
    assert len(got) == 2
    assert sum(t.sleeps) == pytest.approx(7.0)


def test_without_realtime_nothing_sleeps(mixed_pcap: Path) -> None:
    t = FakeTime()
    src = ReplaySource(str(mixed_pcap), "", clock=t.clock, sleep=t.sleep)
    assert len(_drain(src)) == 96
    assert t.sleeps == []


# -- through the CLI ----------------------------------------------------------------------------------
@pytest.mark.parametrize("expression", ["udp port 53", "tcp and (port 80 or port 8080)"])
def test_tap_read_writes_what_tcpdump_selects(tmp_path: Path, mixed_pcap: Path, cli, wireshark,
                                              expression: str) -> None:
    out = tmp_path / "out.pcapng"
    res = cli("tap", "--read", str(mixed_pcap), "-f", expression, "-w", str(out))
    assert res.code == 0, res.err
    n = wireshark.tcpdump_count(mixed_pcap, expression)
    assert f"{n} packets captured" in res.err
    assert len(wireshark.read_ok(out)) == n
    assert [row[0] for row in wireshark.fields(out, "frame.interface_name")] == ["pcap"] * n
    first = struct.unpack("<I", out.read_bytes()[:4])[0]
    assert first == pcapng.BT_SHB


def test_tap_read_snaplen_through_the_cli(tmp_path: Path, mixed_pcap: Path, cli, wireshark) -> None:
    out = tmp_path / "out.pcapng"
    res = cli("tap", "--read", str(mixed_pcap), "-s", "64", "-w", str(out), "-c", "10")
    assert res.code == 0, res.err
    rows = wireshark.fields(out, "frame.len", "frame.cap_len")
    assert len(rows) == 10
    assert all(int(cap) == min(int(length), 64) for length, cap in rows)
    assert any(int(length) > 64 for length, _ in rows)
