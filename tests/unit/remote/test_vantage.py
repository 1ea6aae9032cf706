"""Folding a node's copies of a packet (veth, bridge, uplink) into one; one entry per exchange across nodes."""

from __future__ import annotations

import dpkt

from kstap.remote.vantage import EntryMerge, NodeFold, fingerprint


def frame(ttl: int, mac: bytes, payload: bytes = b"GET / HTTP/1.1\r\n\r\n", sport: int = 40000) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=8080, seq=1, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, data=payload)
    ip = dpkt.ip.IP(src=bytes([10, 250, 1, 5]), dst=bytes([10, 250, 2, 3]), ttl=ttl, p=dpkt.ip.IP_PROTO_TCP,
                    id=7, data=tcp)
    ip.len = len(bytes(ip))
    return bytes(dpkt.ethernet.Ethernet(src=mac, dst=b"\x02" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def test_a_packet_routed_through_the_node_is_one_packet() -> None:
    fold = NodeFold()
    veth, bridge, uplink = frame(64, b"\x0a" * 6), frame(64, b"\x0b" * 6), frame(63, b"\x0c" * 6)
    assert fold.admit(0, 1_000, veth, 1, 0)
    assert not fold.admit(0, 1_020, bridge, 1, 1)  # other MACs: the same packet
    assert not fold.admit(0, 1_050, uplink, 1, 2)  # one hop later: TTL and checksum differ
    assert fold.folded == 2
    assert fold.admit(1, 1_300, frame(62, b"\x0d" * 6), 1, 0)  # the other node's copy: its own vantage point


def test_what_is_not_a_copy_is_kept() -> None:
    fold = NodeFold(window_ns=1_000_000)
    pkt = frame(64, b"\x0a" * 6)
    assert fold.admit(0, 0, pkt, 1, 0)
    assert fold.admit(0, 10, pkt, 1, 0)  # the same interface twice: a real second packet
    assert fold.admit(0, 5_000_000, pkt, 1, 1)  # outside the window
    assert fold.admit(0, 5_000_010, frame(64, b"\x0a" * 6, payload=b"other"), 1, 2)
    assert fold.admit(0, 5_000_020, b"\x00" * 60, 1, 1)  # not IP: never folded
    assert fold.folded == 0


def test_fingerprint_masks_only_the_hop_fields() -> None:
    a, b = fingerprint(frame(64, b"\x0a" * 6), 1), fingerprint(frame(3, b"\x0b" * 6), 1)
    assert a is not None and b is not None and a == b
    assert fingerprint(frame(64, b"\x0a" * 6, sport=1), 1) != a
    assert fingerprint(b"\x00" * 10, 1) is None


def entry(t: float, path: str = "/a", client: str = "10.250.1.5:40000") -> dict[str, object]:
    return {"schema": 1, "time": t, "protocol": "http/1.1", "client": client, "server": "10.250.2.3:8080",
            "method": "GET", "path": path, "status": 200}


def test_one_entry_per_exchange_seen_on_two_nodes() -> None:
    merge = EntryMerge(hold=2.0, window=1.0)
    merge.add("n2", entry(100.002), now=10.0)
    merge.add("n1", entry(100.000), now=10.1)  # its twin from the other node
    merge.add("n1", entry(100.5, "/b"), now=10.2)
    assert merge.ready(now=11.0) == []  # held for a twin
    out = merge.ready(now=12.1)
    assert [(e["path"], e["nodes"], e["time"]) for e in out] == [("/a", ["n1", "n2"], 100.0)]
    assert [(e["path"], e["nodes"]) for e in merge.ready(now=12.3)] == [("/b", ["n1"])]
    assert merge.merged == 1


def test_two_requests_on_one_node_stay_two_and_final_flushes() -> None:
    merge = EntryMerge()
    merge.add("n1", entry(1.0), now=0.0)
    merge.add("n1", entry(1.2), now=0.0)  # the same request again on the same node: a second exchange
    merge.add("n2", entry(9.0), now=0.0)  # too far apart in time to be the same exchange
    out = merge.ready(now=0.5, final=True)
    assert [e["nodes"] for e in out] == [["n1"], ["n1"], ["n2"]]
