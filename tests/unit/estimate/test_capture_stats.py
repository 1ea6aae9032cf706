"""Reading a capture into flows, probabilities, the rate timeline, shed flows and kernel drops."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from kstap.errors import KstapError, UsageError
from kstap.estimate.capture_stats import STATS_SCHEMA, read_capture_stats
from kstap.formats import pcapng
from kstap.model import Interface
from kstap.sampling import metadata

T0 = 1_700_000_000_000_000_000
SEC = 1_000_000_000
RUN = metadata.run_note("percentage", 0.25, "5f78c33274e4", "tcp or udp")

Packet = tuple[int, bytes] | tuple[int, bytes, str | None] | tuple[int, bytes, str | None, int]
"""(time, frame[, comment[, original length]])."""


def write_pcapng(path: Path, packets: Sequence[Packet], *, comment: str = RUN, interfaces: int = 1,
                 isbs: Sequence[tuple[int, int, int]] = (), tail: bytes = b"", isb_comment: str = "") -> Path:
    """A pcapng file from kstap's own block writers. ``isbs``: (interface, received, dropped)."""
    records = []
    comments: dict[int, str] = {}
    for i, p in enumerate(packets):
        data = p[1]
        origlen = p[3] if len(p) > 3 else len(data)
        records.append((p[0], len(data), origlen, data, i % interfaces, 0))
        if len(p) > 2 and p[2]:
            comments[i] = p[2]
    blob = pcapng.section_header(comment=comment)
    blob += b"".join(pcapng.interface_description(Interface(f"eth{i}")) for i in range(interfaces))
    blob += b"".join(pcapng.enhanced_packets(records, comments=comments))
    for if_id, received, dropped in isbs:
        blob += pcapng.interface_statistics(if_id, pcapng.InterfaceCounters(T0, T0 + 20 * SEC, received, dropped, 0),
                                            comment=isb_comment)
    path.write_bytes(blob + tail)
    return path


def flow(fid: str, rate: float) -> str:
    return metadata.flow_note(fid, "percentage", rate, "5f78c33274e4")


def test_unsampled_pcap_is_counted_exactly(tmp_path: Path, frames, pcap) -> None:
    """A plain pcap has no kstap comments: every flow has p = 1, the estimates are the counts."""
    mixed = frames.mixed(40)
    path = pcap(tmp_path / "plain.pcap", [(T0 + i, f) for i, f in enumerate(mixed)] + [(T0 + 99, mixed[0], 1500)])
    s = read_capture_stats(str(path))
    from kstap.sampling.flowkey import flow_key

    keys = {flow_key(f) for f in mixed} - {None}
    non_ip = sum(1 for f in mixed if flow_key(f) is None)
    e = s.estimates
    assert (s.format, s.sampled, s.run, s.complete) == ("pcap", False, None, True)
    assert e.packets.total == e.packets.observed == 41
    assert e.bytes.total == sum(map(len, mixed)) + 1500  # original length, not the captured one
    assert e.flows.total == s.flows_sampled == len(keys)
    assert s.non_ip_packets == non_ip > 0
    assert e.packets.variance == e.bytes.variance == e.flows.variance == 0
    assert (s.timeline.known, s.timeline.mean, s.timeline.changes) == (False, 1.0, ())
    assert s.drops.dropped is None and s.warnings == []


def test_flows_are_direction_free_and_weighted_by_their_comment(tmp_path: Path, frames) -> None:
    a_to_b = frames.tcp(src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=80, payload=b"x" * 100)
    b_to_a = frames.tcp(src="10.0.0.2", dst="10.0.0.1", sport=80, dport=40000, payload=b"y" * 300)
    other = frames.udp(sport=5000, dport=53, payload=b"q" * 20)
    path = write_pcapng(tmp_path / "s.pcapng", [
        (T0, a_to_b, flow("00000001", 0.5)), (T0 + 1, b_to_a), (T0 + 2, a_to_b),
        (T0 + 3, other, flow("00000002", 0.25)),
        (T0 + 4, frames.arp()),
    ])
    s = read_capture_stats(str(path))
    assert s.flows_sampled == s.flows_with_comment == 2
    assert (s.p_min, s.p_max) == (0.25, 0.5)
    e = s.estimates
    assert e.packets.observed == 5
    assert e.packets.total == pytest.approx(3 / 0.5 + 1 / 0.25 + 1)  # the ARP frame: always kept, p = 1
    tcp_bytes = 2 * len(a_to_b) + len(b_to_a)
    assert e.bytes.total == pytest.approx(tcp_bytes / 0.5 + len(other) / 0.25 + len(frames.arp()))
    assert e.bytes.variance == pytest.approx(0.5 * tcp_bytes**2 / 0.25 + 0.75 * len(other) ** 2 / 0.0625)
    assert e.flows.total == pytest.approx(2 + 4)
    assert s.non_ip_packets == 1
    assert s.run is not None and (s.run.mode, s.run.rate, s.run.seed, s.run.filter) == (
        "percentage", 0.25, "5f78c33274e4", "tcp or udp")


def test_flow_without_comment_gets_the_run_rate(tmp_path: Path, frames) -> None:
    path = write_pcapng(tmp_path / "s.pcapng", [
        (T0, frames.udp(sport=1), flow("00000001", 0.5)),
        (T0 + 1, frames.udp(sport=2)),  # started before this file (a ring file), say
    ])
    s = read_capture_stats(str(path))
    assert s.flows_sampled == 2 and s.flows_with_comment == 1
    assert s.estimates.flows.total == pytest.approx(1 / 0.5 + 1 / 0.25)
    assert any("no kstap flow comment" in w and "0.25" in w for w in s.warnings)


def test_full_mode_run_means_p_one(tmp_path: Path, frames) -> None:
    path = write_pcapng(tmp_path / "s.pcapng", [(T0, frames.udp(sport=1)), (T0 + 1, frames.udp(sport=2))],
                        comment=metadata.run_note("full", 1.0, "5f78c33274e4", ""))
    s = read_capture_stats(str(path))
    assert s.estimates.flows.total == 2 and s.estimates.flows.variance == 0
    assert s.sampled and s.timeline.known and s.timeline.mean == 1.0


def test_a_late_comment_names_the_flow_it_belongs_to(tmp_path: Path, frames) -> None:
    """Packets of a key before its flow comment are the same flow, not a second one."""
    path = write_pcapng(tmp_path / "s.pcapng", [
        (T0, frames.udp(sport=1)), (T0 + 1, frames.udp(sport=1), flow("00000001", 0.5)),
        (T0 + 2, frames.udp(sport=1)),
    ])
    s = read_capture_stats(str(path))
    assert s.flows_sampled == 1 and s.estimates.packets.total == pytest.approx(6)


def test_a_second_flow_comment_starts_a_new_instance(tmp_path: Path, frames) -> None:
    """A flow that idled out and came back was decided afresh, perhaps at another rate."""
    f = frames.udp(sport=1)
    path = write_pcapng(tmp_path / "s.pcapng", [
        (T0, f, flow("00000001", 0.5)), (T0 + 1, f),
        (T0 + 90 * SEC, f, flow("00000001", 0.25)),
    ])
    s = read_capture_stats(str(path))
    assert s.flows_sampled == 2
    assert s.estimates.packets.total == pytest.approx(2 / 0.5 + 1 / 0.25)
    assert s.estimates.flows.total == pytest.approx(6)


def test_rate_timeline_and_rate_comments(tmp_path: Path, frames) -> None:
    """rate comments mark changes; a flow comment shows the rate in force; the mean is time-weighted."""
    path = write_pcapng(tmp_path / "s.pcapng", [
        (T0, frames.udp(sport=1), flow("00000001", 0.25)),
        (T0 + 4 * SEC, frames.udp(sport=1), metadata.rate_note("00000001", 0.125, 0.25, "pi")),
        (T0 + 6 * SEC, frames.udp(sport=2), flow("00000002", 0.125)),
        (T0 + 8 * SEC, frames.udp(sport=3), flow("00000003", 0.5)),  # revealed by a flow comment
        (T0 + 10 * SEC, frames.udp(sport=3)),
    ])
    s = read_capture_stats(str(path))
    t = s.timeline
    assert t.known and t.initial == 0.25
    assert [(c.time_ns - T0, c.previous, c.rate, c.reason) for c in t.changes] == [
        (4 * SEC, 0.25, 0.125, "pi"), (8 * SEC, 0.125, 0.5, None)]
    assert (t.minimum, t.maximum) == (0.125, 0.5)
    assert t.mean == pytest.approx((0.25 * 4 + 0.125 * 4 + 0.5 * 2) / 10)
    # the rate comment does not change flow 1's probability: it was decided at its first packet
    assert s.estimates.packets.total == pytest.approx(2 / 0.25 + 1 / 0.125 + 2 / 0.5)
    d = s.as_dict()["rate_timeline"]
    assert d["changes"][0] == {"time_ns": T0 + 4 * SEC, "offset_s": 4.0, "rate": 0.125, "previous": 0.25,
                               "reason": "pi"}


def test_rate_changes_no_packet_carried_come_from_the_statistics_block(tmp_path: Path, frames) -> None:
    """The capture ended before a packet could carry the last changes: the closing ISB has them."""
    last = metadata.rate_note("-", 0.5, 0.25, "pi") + "\n" + metadata.rate_note("-", 1.0, 0.5, "control")
    path = write_pcapng(tmp_path / "s.pcapng", [
        (T0, frames.udp(sport=1), flow("00000001", 0.25)), (T0 + 10 * SEC, frames.udp(sport=1))],
        isbs=[(0, 2, 0)], isb_comment=last)
    t = read_capture_stats(str(path)).timeline
    assert [(c.time_ns - T0, c.previous, c.rate, c.reason) for c in t.changes] == [
        (20 * SEC, 0.25, 0.5, "pi"), (20 * SEC, 0.5, 1.0, "control")]
    assert t.maximum == 1.0


def test_full_mode_flows_need_no_comment_and_the_filter_is_clean(tmp_path: Path, frames) -> None:
    run = metadata.run_note("full", 1.0, "5f78c33274e4", "tcp port 80") + "; backend=afpacket"
    path = write_pcapng(tmp_path / "s.pcapng", [(T0, frames.udp(sport=1)), (T0 + 1, frames.udp(sport=2))],
                        comment=run)
    s = read_capture_stats(str(path))
    assert s.warnings == [] and s.sampled and s.run is not None
    assert (s.run.mode, s.run.filter) == ("full", "tcp port 80")
    none = metadata.run_note("full", 1.0, "5f78c33274e4", "") + "; backend=afpacket"
    assert read_capture_stats(str(write_pcapng(tmp_path / "n.pcapng", [], comment=none))).run.filter == "(none)"  # type: ignore[union-attr]


def test_several_notes_in_one_comment(tmp_path: Path, frames) -> None:
    """One comment may carry a flow note and a rate note, one per line."""
    both = flow("00000002", 0.125) + "\n" + metadata.rate_note("00000002", 0.125, 0.5, "pi")
    path = write_pcapng(tmp_path / "s.pcapng", [
        (T0, frames.udp(sport=1), flow("00000001", 0.5)), (T0 + SEC, frames.udp(sport=2), both)],
        comment=metadata.run_note("auto", 0.5, "5f78c33274e4", ""))
    s = read_capture_stats(str(path))
    assert s.estimates.flows.total == pytest.approx(2 + 8)
    assert [(c.rate, c.reason) for c in s.timeline.changes] == [(0.125, "pi")]


def test_shed_flows_are_counted(tmp_path: Path, frames) -> None:
    path = write_pcapng(tmp_path / "s.pcapng", [
        (T0, frames.udp(sport=1), flow("00000001", 0.5)),
        (T0 + 1, frames.udp(sport=1), metadata.shed_note("00000001", 0.25, "emergency")),
        (T0 + 2, frames.udp(sport=2), flow("00000002", 0.5)),
    ])
    s = read_capture_stats(str(path))
    assert s.shed_flows == 1 and s.flows_sampled == 2
    assert any("shed" in w for w in s.warnings)


def test_unusable_rate_falls_back_to_the_run_rate(tmp_path: Path, frames) -> None:
    path = write_pcapng(tmp_path / "s.pcapng", [
        (T0, frames.udp(sport=1), "kstap: flow id=00000001 mode=percentage rate=zero seed=x"),
        (T0 + 1, frames.udp(sport=2), flow("00000002", 2.0)),  # above 1 means keep all
    ])
    s = read_capture_stats(str(path))
    assert s.estimates.flows.total == pytest.approx(4 + 1)
    assert any("no usable rate" in w for w in s.warnings)


def test_kernel_drops_last_isb_per_interface_summed(tmp_path: Path, frames) -> None:
    path = write_pcapng(tmp_path / "s.pcapng", [(T0, frames.udp(), flow("00000001", 0.5))], interfaces=2,
                        isbs=[(0, 100, 3), (1, 50, 1), (0, 200, 7), (1, 80, 2)])
    s = read_capture_stats(str(path))
    assert (s.drops.dropped, s.drops.received, s.drops.interfaces) == (9, 280, 2)
    # drops are reported apart, never folded into the estimates
    assert s.estimates.packets.total == pytest.approx(2)
    assert any("dropped 9" in w for w in s.warnings)
    d = s.as_dict()["kernel_drops"]
    assert d["dropped"] == 9 and "not sampling" in d["note"]


def test_truncated_file_gives_estimates_of_what_was_read(tmp_path: Path, frames) -> None:
    packets: list[Packet] = [(T0 + i, frames.udp(sport=i % 5), flow(f"{i:08x}", 0.5) if i < 5 else None)
                             for i in range(20)]
    whole = write_pcapng(tmp_path / "whole.pcapng", packets).read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(whole[: len(whole) - 30])
    s = read_capture_stats(str(cut))
    assert not s.complete and s.error is not None and "truncated" in s.error
    assert s.packets_read == 19 and s.estimates.packets.observed == 19
    assert s.estimates.packets.total == pytest.approx(38)
    assert any("19 packet(s)" in w for w in s.warnings)
    assert s.as_dict()["complete"] is False


def test_section_without_packets(tmp_path: Path) -> None:
    s = read_capture_stats(str(write_pcapng(tmp_path / "empty.pcapng", [])))
    assert s.run is not None and s.run.rate == 0.25
    assert s.estimates.packets.total == 0 and s.timeline.mean == 0.25 and s.timeline.known
    assert s.first_ns is None and s.last_ns is None


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        read_capture_stats(str(tmp_path / "nope.pcapng"))
    with pytest.raises(UsageError):
        read_capture_stats(str(tmp_path))


def test_not_a_capture_is_a_runtime_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pcapng"
    garbage.write_bytes(b"this is not a capture file at all\n" * 4)
    with pytest.raises(KstapError, match="not a pcap or pcapng file") as info:
        read_capture_stats(str(garbage))
    assert not isinstance(info.value, UsageError)


def test_json_object_is_plain_and_finite(tmp_path: Path, frames) -> None:
    import json

    path = write_pcapng(tmp_path / "s.pcapng", [(T0, frames.udp(), flow("00000001", 0.5))],
                        isbs=[(0, 1, 0)])
    d = json.loads(json.dumps(read_capture_stats(str(path)).as_dict(), allow_nan=False))
    assert d["schema"] == STATS_SCHEMA
    assert d["estimates"]["packets"]["estimate"] == 2
    assert all(math.isfinite(v) for v in d["estimates"]["packets"]["ci95"])
