"""The flow table: decisions per flow, live flows survive a rate cut, sheds are marked."""

from __future__ import annotations

import dpkt

from kstap.model import PacketRecord
from kstap.sampling import metadata
from kstap.sampling.flowhash import FULL, flow_hash, threshold
from kstap.sampling.flowkey import flow_key
from kstap.sampling.sampler import FlowSampler

SEED = 99


def udp(sport: int, ts: int = 0, reply: bool = False) -> PacketRecord:
    a, b = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
    src, dst, sp, dp = (b, a, 53, sport) if reply else (a, b, sport, 53)
    u = dpkt.udp.UDP(sport=sp, dport=dp, data=b"x")
    u.ulen = 9
    raw = bytes(dpkt.ethernet.Ethernet(type=0x800, data=dpkt.ip.IP(src=src, dst=dst, p=17, data=u)))
    return (ts, len(raw), len(raw), raw, 0, 0)


def hash_of(rec: PacketRecord) -> int:
    key = flow_key(rec[3])
    assert key is not None
    return flow_hash(key, SEED)


def test_each_flow_is_decided_once_with_a_comment_on_its_first_kept_packet() -> None:
    s = FlowSampler("percentage", 0.5, SEED)
    recs = [udp(p) for p in range(1000, 1200)] + [udp(p, reply=True) for p in range(1000, 1200)]
    kept, notes = s.admit(recs)
    kept_ports = {r for r in range(1000, 1200) if hash_of(udp(r)) < threshold(0.5)}
    assert len(kept) == 2 * len(kept_ports)
    assert len(notes) == len(kept_ports)  # one note per kept flow, on its first packet only
    note = metadata.parse(next(iter(notes.values())))
    assert note is not None and note.event == "flow" and note.rate() == 0.5
    assert note.fields["seed"] == s.seed_id and str(SEED) not in note.fields["seed"]
    assert s.stats.flows_seen == 200 and s.stats.flows_kept == len(kept_ports)


def test_lowering_the_rate_stops_new_flows_but_not_live_ones() -> None:
    s = FlowSampler("auto", 1.0, SEED)
    live = [udp(p, ts=1) for p in range(2000, 2100)]
    s.admit(live)
    assert s.ceiling() == FULL
    assert s.set_rate(0.1, "pi")
    again, notes = s.admit([udp(p, ts=2) for p in range(2000, 2100)])
    assert len(again) == 100  # every live flow goes on
    assert any(metadata.parse(n).event == "rate" for n in notes.values())  # type: ignore[union-attr]
    fresh, _ = s.admit([udp(p, ts=3) for p in range(3000, 3400)])
    assert all(hash_of(r) < threshold(0.1) for r in fresh)
    assert s.ceiling() == max(hash_of(r) for r in live) + 1  # the kernel keeps passing live flows


def test_idle_flows_expire_and_the_ceiling_comes_down() -> None:
    s = FlowSampler("auto", 1.0, SEED, idle_timeout_ns=10)
    s.admit([udp(p, ts=0) for p in range(100)])
    s.set_rate(0.2, "pi")
    assert s.ceiling() > threshold(0.2)
    assert s.expire(now_ns=100) == 100
    assert s.ceiling() == threshold(0.2)


def test_emergency_shed_cuts_highest_hashes_and_marks_them() -> None:
    s = FlowSampler("auto", 1.0, SEED)
    recs = [udp(p) for p in range(5000, 5300)]
    s.admit(recs)
    shed = s.shed(0.25)
    doomed = [r for r in recs if hash_of(r) >= threshold(0.25)]
    assert len(shed) == len(doomed)
    kept, notes = s.admit(doomed)
    assert len(kept) == len(doomed)  # one last packet each, carrying the mark
    assert all(metadata.parse(n).event == "shed" for n in notes.values())  # type: ignore[union-attr]
    assert len(notes) == len(doomed)
    after, _ = s.admit(doomed)
    assert after == []
    s.ceiling()  # grace tick
    assert s.ceiling() == threshold(0.25)


def test_full_mode_keeps_everything() -> None:
    s = FlowSampler("full", 0.3, SEED)
    assert s.rate == 1.0 and s.ceiling() == FULL
    arp = bytes(dpkt.ethernet.Ethernet(type=0x0806, data=b"\0" * 28))
    kept, _ = s.admit([udp(1), (0, len(arp), len(arp), arp, 0, 0)])
    assert len(kept) == 2


def test_every_rate_change_is_written_even_several_between_packets() -> None:
    s = FlowSampler("auto", 1.0, SEED)
    s.admit([udp(2000, ts=1)])
    s.set_rate(0.5, "pi")
    s.set_rate(0.25, "emergency")
    assert s.unwritten_rate_notes() == ["kstap: rate id=- rate=0.5 previous=1 reason=pi",
                                        "kstap: rate id=- rate=0.25 previous=0.5 reason=emergency"]
    kept, notes = s.admit([udp(2000, ts=2)])
    assert len(kept) == 1
    lines = notes[0].splitlines()
    assert [(n.rate(), n.fields["previous"], n.fields["reason"]) for n in map(metadata.parse, lines)  # type: ignore[union-attr]
            ] == [(0.5, "1", "pi"), (0.25, "0.5", "emergency")]
    assert s.unwritten_rate_notes() == []
    s.set_rate(0.5, "pi")  # no packet follows: the file's statistics block carries it
    assert len(s.unwritten_rate_notes()) == 1
