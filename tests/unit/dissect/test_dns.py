"""DNS: decoding (header, first question, records skipped by length), UDP pairing by (flow, id), TCP
framing, and hostile messages."""

from __future__ import annotations

import struct

import pytest
from dissect_traffic import T0, Conversation, Run, dns_query, dns_response, make_run, udp_frame

from kstap.dissect.api import FlowContext, ParserError
from kstap.dissect.dns import DnsError, DnsTcpParser, decode, plausible
from kstap.sampling.flowkey import FlowKey


def udp(run: Run, pairs: list[tuple[str, str, int, int, bytes, int]]) -> None:
    recs = []
    for src, dst, sport, dport, payload, ms in pairs:
        f = udp_frame(src, dst, sport, dport, payload)
        recs.append((T0 + ms * 1_000_000, len(f), len(f), f, 0, 0))
    run.feed(recs)


def test_decode_fields() -> None:
    m = decode(dns_response("www.example.test", 7, rcode=0, answers=3))
    assert (m.id, m.response, m.rcode, m.name, m.qtype, m.answers) == (7, True, 0, "www.example.test", 1, 3)
    q = decode(dns_query("x.test", 9, qtype=28))
    assert (q.response, q.qtype) == (False, 28)


HEADER = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0)


def test_compression_loop_leaves_the_header() -> None:
    looping = HEADER + b"\xc0\x0c" + b"\x00\x01\x00\x01"  # the name points at itself
    m = decode(looping)
    assert (m.id, m.name, m.qtype, m.problem) == (1, None, None, "dns-compression")
    chain = HEADER + b"\x01a\xc0\x0c" + b"\x00\x01\x00\x01"  # a label, then back to its own start
    assert decode(chain).problem == "dns-compression"
    # a forward pointer that ends is followed, as tshark does
    forward = HEADER + b"\xc0\x12" + b"\x00\x01\x00\x01" + b"\x02ok\x00"
    assert (decode(forward).name, decode(forward).problem) == ("ok", None)


@pytest.mark.parametrize("msg", [b"", b"\x00" * 5, b"\x00" * 11])
def test_shorter_than_a_header(msg: bytes) -> None:
    with pytest.raises(DnsError):
        decode(msg)


@pytest.mark.parametrize("msg", [HEADER + b"\x3fabc", HEADER + b"\x80abc", HEADER + b"\x01a\x00\x00",
                                 struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + b"\x01a\x00\x00\x01\x00\x01"
                                 + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02"])
def test_damage_past_the_header_is_a_problem(msg: bytes) -> None:
    m = decode(msg)
    assert m.problem == "dns-malformed" and m.id == 1


def rr(rtype: int, rdata: bytes, name: bytes = b"\xc0\x0c") -> bytes:
    return name + struct.pack("!HHIH", rtype, 1, 300, len(rdata)) + rdata


@pytest.mark.parametrize("rtype", [46, 48, 43, 47, 50, 51, 65, 64, 257, 99, 35, 44, 29, 11, 250, 249, 16, 41,
                                   65280])
def test_any_record_type_is_skipped_by_its_length(rtype: int) -> None:
    rdata = bytes(range(256))[: 7 + rtype % 40] + b"\xff\xfe"  # not what the type says: never looked into
    msg = struct.pack("!HHHHHH", 9, 0x8183, 1, 2, 1, 1) + b"\x03www\x04test\x00" + struct.pack("!HH", rtype, 1)
    msg += rr(rtype, rdata) + rr(rtype, b"") + rr(6, b"\x00" * 22) + rr(41, b"", b"\x00")
    m = decode(msg)
    assert (m.id, m.response, m.rcode, m.name, m.qtype, m.answers, m.problem) == (9, True, 3, "www.test", rtype, 2,
                                                                                  None)


@pytest.mark.parametrize(("label", "shown"), [
    (b"plain", "plain"), (b"caf\xc3\xa9", "caf\u00e9"), (b"a.b", "a.b"), (b"a\\b", "a\\b"),
    (b"x\x00y", "x\\000y"), (b"x\ty\n", "x\\ty\\n"), (b"\x7f", "\\177"), (b"\xff\xfe", "\ufffd\ufffd"),
    (b"a\xe2\x82b", "a\ufffdb"), (b"\xc0\xaf", "/"), (b"\xed\xa0\x80", "\ufffd"), (b"\xe9\x01", "\ufffd\\001"),
])
def test_names_are_shown_as_tshark_shows_them(label: bytes, shown: str) -> None:
    msg = HEADER + bytes([len(label)]) + label + b"\x04test\x00\x00\x01\x00\x01"
    assert decode(msg).name == f"{shown}.test"
    assert decode(HEADER + b"\x00\x00\x02\x00\x01").name == "<Root>"


def test_udp_pairs_by_flow_and_id() -> None:
    r = make_run()
    udp(r, [
        ("10.0.0.1", "10.0.0.53", 5000, 53, dns_query("a.test", 1), 0),
        ("10.0.0.1", "10.0.0.53", 5001, 53, dns_query("b.test", 1), 1),  # same id, other flow
        ("10.0.0.53", "10.0.0.1", 53, 5001, dns_response("b.test", 1, rcode=3, answers=0), 3),
        ("10.0.0.53", "10.0.0.1", 53, 5000, dns_response("a.test", 1, answers=2), 4),
        ("10.0.0.53", "10.0.0.1", 53, 5000, dns_response("a.test", 1, answers=2), 5),  # duplicate answer
        ("10.0.0.1", "10.0.0.53", 5002, 53, dns_query("lost.test", 5), 6),
    ])
    entries = r.close()
    got = [(e.query_name, e.rcode, e.answers, e.client, e.error) for e in entries]
    assert got == [("b.test", "NXDOMAIN", 0, "10.0.0.1:5001", None), ("a.test", "NOERROR", 2, "10.0.0.1:5000", None),
                   ("lost.test", None, None, "10.0.0.1:5002", "no-response")]
    assert entries[0].latency_ms == 2.0 and entries[0].transport == "udp" and entries[0].server == "10.0.0.53:53"
    assert r.stage.stats().memory_bytes == 0


def test_udp_other_ports_need_an_answer() -> None:
    r = make_run()
    udp(r, [
        ("10.0.0.1", "10.0.0.9", 6000, 5353, dns_query("mdns.local", 3), 0),  # never answered: dropped
        ("10.0.0.1", "10.0.0.9", 6001, 9953, dns_query("alt.test", 4), 1),
        ("10.0.0.9", "10.0.0.1", 9953, 6001, dns_response("alt.test", 4), 2),
        ("10.0.0.1", "10.0.0.9", 6002, 9999, b"kstap-demo 0000000001 ......", 3),
    ])
    assert [e.query_name for e in r.close()] == ["alt.test"]


def test_udp_garbage_on_port_53_is_counted() -> None:
    r = make_run()
    header = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0)
    udp(r, [("10.0.0.1", "10.0.0.53", 5000, 53, header + b"\xc0\x0c\x00\x01\x00\x01", 0),
            ("10.0.0.1", "10.0.0.53", 5000, 53, b"\x01\x02", 1)])
    assert [(e.query_name, e.error) for e in r.close()] == [(None, "no-response")]  # the header is a query
    assert r.stage.stats().errors == {"dns-compression": 1, "dns-malformed": 1}


def test_plausible() -> None:
    assert plausible(dns_query("a.test", 1))
    assert plausible(dns_response("a.test", 1))
    assert not plausible(b"GET / HTTP/1.1\r\n\r\n")
    assert not plausible(b"\x00" * 40)


def framed(msg: bytes) -> bytes:
    return len(msg).to_bytes(2, "big") + msg


def test_tcp_parser_framing_and_order() -> None:
    key = FlowKey(6, b"\n\0\0\1", 40000, b"\n\0\0\2", 53)
    p = DnsTcpParser(FlowContext("00000001", "10.0.0.1:40000", "10.0.0.2:53", key))
    stream = framed(dns_query("one.test", 1)) + framed(dns_query("two.test", 2))
    out = []
    for i in range(len(stream)):  # byte by byte
        out += p.feed(0, stream[i : i + 1], i)
    answers = framed(dns_response("two.test", 2)) + framed(dns_response("one.test", 1, rcode=2, answers=0))
    out += p.feed(1, answers, 1000)
    assert [(e.query_name, e.rcode, e.transport) for e in out] == [("two.test", "NOERROR", "tcp"),
                                                                  ("one.test", "SERVFAIL", "tcp")]
    assert p.close(2000) == []


def test_tcp_parser_refuses_garbage() -> None:
    key = FlowKey(6, b"\n\0\0\1", 40000, b"\n\0\0\2", 53)
    p = DnsTcpParser(FlowContext("00000001", "10.0.0.1:40000", "10.0.0.2:53", key))
    with pytest.raises(ParserError):
        p.feed(0, framed(b"\x00\x01\x01\x00\x00\x01"), 1)


def test_dns_over_tcp_through_the_stage() -> None:
    c = Conversation(sport=53).handshake()
    c.send(framed(dns_query("t1.test", 1)) + framed(dns_query("t2.test", 2)))
    c.reply(framed(dns_response("t2.test", 2)))
    c.reply(framed(dns_response("t1.test", 1, answers=3)))
    c.send(framed(dns_query("t3.test", 3)))
    c.fin()
    entries = make_run().feed(c.records).close()
    assert [(e.query_name, e.answers, e.error) for e in entries] == [
        ("t2.test", 1, None), ("t1.test", 3, None), ("t3.test", None, "no-response")]
