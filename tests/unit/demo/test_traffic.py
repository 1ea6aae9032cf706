"""The demo's traffic helpers, without root: DNS answers, the HTTP handler and the client, over lo."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import dpkt
import pytest

from kstap.demo import traffic

ZONE = traffic.demo_zone("10.213.77.2")


def _ask(name: str, qtype: int = dpkt.dns.DNS_A) -> dpkt.dns.DNS:
    query = dpkt.dns.DNS(id=4242, qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])
    reply = traffic.dns_answer(bytes(query), ZONE)
    assert reply is not None
    return dpkt.dns.DNS(reply)


def test_dns_answers_an_a_query_from_the_zone() -> None:
    r = _ask(f"api.{traffic.DEMO_ZONE}")
    assert (r.id, r.qr, r.rcode, r.aa) == (4242, dpkt.dns.DNS_R, dpkt.dns.DNS_RCODE_NOERR, 1)
    assert [q.name for q in r.qd] == [f"api.{traffic.DEMO_ZONE}"]
    assert [(a.type, socket.inet_ntoa(a.ip), a.ttl) for a in r.an] == [(dpkt.dns.DNS_A, "10.213.77.2", 60)]


def test_dns_names_are_case_insensitive() -> None:
    assert len(_ask(f"WWW.{traffic.DEMO_ZONE.upper()}").an) == 1


def test_dns_unknown_name_is_nxdomain() -> None:
    r = _ask(f"nosuch.{traffic.DEMO_ZONE}")
    assert (r.id, r.qr, r.rcode, r.an) == (4242, dpkt.dns.DNS_R, dpkt.dns.DNS_RCODE_NXDOMAIN, [])


def test_dns_known_name_other_type_is_nodata() -> None:
    r = _ask(f"db.{traffic.DEMO_ZONE}", dpkt.dns.DNS_AAAA)
    assert (r.rcode, r.an) == (dpkt.dns.DNS_RCODE_NOERR, [])


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff" * 12, b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 7])
def test_dns_garbage_gets_no_answer(data: bytes) -> None:
    assert traffic.dns_answer(data, ZONE) is None


def test_dns_responses_get_no_answer() -> None:
    reply = traffic.dns_answer(traffic.dns_query(f"www.{traffic.DEMO_ZONE}", 1), ZONE)
    assert reply is not None
    assert traffic.dns_answer(reply, ZONE) is None


@pytest.fixture
def server() -> Iterator[traffic.DemoServer]:
    with traffic.DemoServer("127.0.0.1", 0, 0, 0) as s:
        yield s


@pytest.mark.timeout(20)
def test_http_handler_serves_keep_alive_requests(server: traffic.DemoServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.ports[0], timeout=5)
    try:
        conn.request("GET", "/")
        r = conn.getresponse()
        assert (r.status, r.version, r.read()) == (200, 11, b"hello from the kstap demo\n")
        sock = conn.sock
        conn.request("GET", "/api/items/7")
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Type") == "application/json"
        assert json.loads(r.read())["id"] == 7
        conn.request("POST", "/api/echo", body=b'{"a": 1}', headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert json.loads(r.read()) == {"received": 8}
        conn.request("GET", "/missing")
        r = conn.getresponse()
        assert r.status == 404 and int(r.getheader("Content-Length") or -1) == len(r.read())
        assert conn.sock is sock  # one connection carried all four (keep-alive)
    finally:
        conn.close()


@pytest.mark.timeout(20)
def test_client_drives_all_three_servers(server: traffic.DemoServer) -> None:
    http_port, dns_port, sink_port = server.ports
    cfg = traffic.ClientSettings(server="127.0.0.1", duration=0.6, http_rps=20, dns_qps=10, udp_pps=100,
                                 requests_per_conn=3, http_port=http_port, dns_port=dns_port,
                                 sink_port=sink_port)
    t0 = time.monotonic()
    counts = traffic.run_client(cfg)
    assert time.monotonic() - t0 < 5
    assert counts.http_requests >= 5 and counts.http_errors == 0
    assert counts.dns_queries >= 3
    assert counts.dns_answers == counts.dns_queries  # lo loses nothing
    assert 0 < counts.dns_nxdomain < counts.dns_answers  # one name in five is unknown
    assert counts.udp_datagrams >= 30


@pytest.mark.timeout(10)
def test_paced_keeps_the_rate_and_the_deadline() -> None:
    calls: list[int] = []
    t0 = time.monotonic()
    traffic.paced(100, t0 + 0.5, threading.Event(), calls.append)
    assert time.monotonic() - t0 < 1.0
    assert 30 <= len(calls) <= 55
    assert calls == list(range(len(calls)))


@pytest.mark.timeout(10)
def test_paced_stops_when_asked() -> None:
    stop = threading.Event()
    stop.set()
    calls: list[int] = []
    traffic.paced(1000, time.monotonic() + 60, stop, calls.append)
    assert calls == []
