"""Real HTTP/1.1 and DNS (UDP and TCP) between two lab namespaces, captured by ``kstap tap``, dissected by
``kstap dissect``: every exchange appears exactly once with the right fields, and tshark agrees.

Servers: kstap.demo.traffic's HTTP/1.1 server (stdlib ``http.server``, keep-alive) and DNS responder
on port 53/UDP, plus a DNS-over-TCP responder written here on 53/TCP (same zone, RFC 7766 framing).
Client: ``http.client`` with keep-alive, a raw socket that pipelines three requests, stub DNS
queries over UDP and two DNS-over-TCP connections (one with two queries in flight).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kstap.sampling.flowhash import flow_id
from kstap.sampling.flowkey import FlowKey

pytestmark = [pytest.mark.privileged, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

SERVER_SRC = r'''
import socket, sys, threading, time
from kstap.demo.traffic import DemoServer, demo_zone, dns_answer
addr, lifetime = sys.argv[1], float(sys.argv[2])
zone = demo_zone(addr)
deadline = time.monotonic() + lifetime
def conn(c):
    c.settimeout(5)
    buf = b""
    try:
        while time.monotonic() < deadline:
            data = c.recv(4096)
            if not data:
                break
            buf += data
            while len(buf) >= 2 and len(buf) - 2 >= int.from_bytes(buf[:2], "big"):
                n = int.from_bytes(buf[:2], "big")
                reply = dns_answer(buf[2:2 + n], zone)
                buf = buf[2 + n:]
                if reply is not None:
                    c.sendall(len(reply).to_bytes(2, "big") + reply)
    except OSError:
        pass
    c.close()
def tcp_dns():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 53))
    s.listen(16)
    s.settimeout(0.3)
    while time.monotonic() < deadline:
        try:
            c, _ = s.accept()
        except socket.timeout:
            continue
        threading.Thread(target=conn, args=(c,), daemon=True).start()
threading.Thread(target=tcp_dns, daemon=True).start()
with DemoServer(addr, 80, 53, 9):
    print("READY", flush=True)
    while time.monotonic() < deadline:
        time.sleep(0.2)
'''

CLIENT_SRC = r'''
import http.client, json, re, socket, sys, time
import dpkt
from kstap.demo.traffic import dns_query
server = sys.argv[1]
done = {"http": [], "dns": []}
# 1. keep-alive: one connection, several requests (HEAD last: the demo server answers 501 and closes)
conn = http.client.HTTPConnection(server, 80, timeout=5)
for method, path, body in (("GET", "/", None), ("GET", "/api/items", None), ("POST", "/api/echo", b'{"n": 1}'),
                           ("GET", "/missing", None), ("GET", "/api/items/7", None), ("HEAD", "/", None)):
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    port = conn.sock.getsockname()[1]
    r = conn.getresponse()
    r.read()
    done["http"].append([method, path, r.status, port])
conn.close()
# 2. pipelining: three requests in one write, then read every answer until the server closes
s = socket.create_connection((server, 80), timeout=5)
port = s.getsockname()[1]
paths = ["/api/items/1", "/health", "/nothere"]
reqs = b"".join(b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (p.encode(), server.encode(),
                b"Connection: close\r\n" if i == 2 else b"") for i, p in enumerate(paths))
s.sendall(reqs)
data = b""
end = time.monotonic() + 5
while time.monotonic() < end:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
s.close()
statuses = [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]
assert len(statuses) == 3, data
for p, st in zip(paths, statuses):
    done["http"].append(["GET", p, st, port])
# 3. DNS over UDP, one fresh socket per query
for i, (name, qtype) in enumerate((("www.demo.kstap.test", 1), ("nosuch.demo.kstap.test", 1),
                                   ("api.demo.kstap.test", 28))):
    q = dpkt.dns.DNS(id=100 + i, qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(3)
    u.sendto(bytes(q), (server, 53))
    r = dpkt.dns.DNS(u.recv(4096))
    done["dns"].append([name, qtype, r.rcode, len(r.an), "udp", u.getsockname()[1]])
    u.close()
# 4. DNS over TCP: two queries in flight on one connection, then a second connection
def framed(m):
    return len(m).to_bytes(2, "big") + m
def tcp_queries(items):
    t = socket.create_connection((server, 53), timeout=5)
    t.sendall(b"".join(framed(dns_query(n, q)) for n, q in items))
    buf = b""
    got = []
    while len(got) < len(items):
        buf += t.recv(4096)
        while len(buf) >= 2 and len(buf) - 2 >= int.from_bytes(buf[:2], "big"):
            n = int.from_bytes(buf[:2], "big")
            got.append(dpkt.dns.DNS(buf[2:2 + n]))
            buf = buf[2 + n:]
    port = t.getsockname()[1]
    t.close()
    by_id = {r.id: r for r in got}
    for name, qid in items:
        r = by_id[qid]
        done["dns"].append([name, 1, r.rcode, len(r.an), "tcp", port])
tcp_queries([("db.demo.kstap.test", 201), ("cache.demo.kstap.test", 202)])
tcp_queries([("gone.demo.kstap.test", 203)])
print(json.dumps(done), flush=True)
'''

RCODES = {0: "NOERROR", 3: "NXDOMAIN"}
QTYPES = {1: "A", 28: "AAAA"}


def key_of(client: str, cport: int, server: str, sport: int, proto: int = 6) -> FlowKey:
    a = (socket.inet_aton(client), cport)
    b = (socket.inet_aton(server), sport)
    lo, hi = sorted((a, b))
    return FlowKey(proto, lo[0], lo[1], hi[0], hi[1])


def messages(rows: list[list[str]]) -> list[tuple[str, ...]]:
    """tshark field rows → one tuple per message (fields of several messages in a frame are a,b,c)."""
    out: list[tuple[str, ...]] = []
    for row in rows:
        columns = [cell.split(",") for cell in row]
        out += list(zip(*columns, strict=True))
    return out


@pytest.fixture
def traffic(harness, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Capture the whole conversation with ``kstap tap`` on the server's veth end; returns (file, done)."""
    lab = harness.lab
    server = lab.spawn(lab.server, [sys.executable, "-c", SERVER_SRC, lab.server_ip, "60"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == b"READY"
    path = tmp_path / "lab.pcapng"
    cap = harness.kstap(path)
    r = subprocess.run(["ip", "netns", "exec", lab.client, sys.executable, "-c", CLIENT_SRC, lab.server_ip],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    done = json.loads(r.stdout)
    harness.settle(path, minimum=40)
    assert cap.stop() == 0, cap.stderr
    assert harness.summary(cap.stderr)["dropped"] == 0
    return path, done


def test_every_exchange_once_and_tshark_agrees(traffic, harness, kstap_proc, wireshark) -> None:  # type: ignore[no-untyped-def]
    path, done = traffic
    lab = harness.lab
    r = kstap_proc("dissect", str(path), "--entries", "-", timeout=60)
    assert r.returncode == 0, r.stderr
    entries = [json.loads(line) for line in r.stdout.splitlines()]
    assert all(e["schema"] == 1 for e in entries)
    http = [e for e in entries if e["protocol"].startswith("http")]
    dns = [e for e in entries if e["protocol"] == "dns"]
    assert len(http) + len(dns) == len(entries)

    # HTTP: exactly the client's exchanges, each once, with the right fields
    assert Counter((e["method"], e["path"], e["status"]) for e in http) == \
        Counter((m, p, s) for m, p, s, _ in done["http"])
    assert len(done["http"]) == 9
    for e in http:
        assert e["protocol"] == "http/1.1" and "error" not in e, e
        assert e["client"].startswith(lab.client_ip + ":") and e["server"] == f"{lab.server_ip}:80"
        assert e["latency_ms"] >= 0 and e["request_bytes"] > 0 and e["response_bytes"] > 0
        assert e["authority"]
        cport = int(e["client"].rsplit(":", 1)[1])
        assert e["flow_id"] == flow_id(key_of(lab.client_ip, cport, lab.server_ip, 80), 0)
    posts = [e for e in http if e["method"] == "POST"]
    assert posts[0]["request_bytes"] > len(b'{"n": 1}')
    # requests on one connection share its flow id, and the pipelined ones come back in order
    by_port = {p: [(m, path_, s) for m, path_, s, pp in done["http"] if pp == p] for *_, p in done["http"]}
    for port, exchanges in by_port.items():
        mine = [(e["method"], e["path"], e["status"]) for e in http if e["client"].endswith(f":{port}")]
        assert mine == exchanges
        assert len({e["flow_id"] for e in http if e["client"].endswith(f":{port}")}) == 1

    # DNS: each query once, with name, type, rcode, answer count and transport
    want = Counter((n, QTYPES[t], RCODES[rc], an, tr) for n, t, rc, an, tr, _ in done["dns"])
    assert Counter((e["query_name"], e["query_type"], e["rcode"], e["answers"], e["transport"]) for e in dns) == want
    for e in dns:
        assert "error" not in e and e["server"] == f"{lab.server_ip}:53" and e["latency_ms"] >= 0

    # tshark, on the same file (a frame holding several messages lists each field comma-separated)
    t_req = messages(wireshark.fields(path, "http.request.method", "http.request.uri", display_filter="http.request"))
    t_resp = messages(wireshark.fields(path, "http.response.code", display_filter="http.response"))
    assert len(t_req) == len(t_resp) == len(http)
    assert Counter((m, u) for m, u in t_req) == Counter((e["method"], e["path"]) for e in http)
    assert Counter(int(c) for (c,) in t_resp) == Counter(e["status"] for e in http)
    t_dns = messages(wireshark.fields(path, "dns.qry.name", "dns.flags.rcode", "dns.count.answers",
                                      display_filter="dns.flags.response == 1"))
    assert Counter((n, RCODES[int(rc)], int(an)) for n, rc, an in t_dns) == \
        Counter((e["query_name"], e["rcode"], e["answers"]) for e in dns)
    t_queries = messages(wireshark.fields(path, "dns.qry.name", display_filter="dns.flags.response == 0"))
    assert Counter(n for (n,) in t_queries) == Counter(e["query_name"] for e in dns)

    # the summary on stderr
    assert f"{len(entries)} entries to stdout" in r.stderr
    assert "errors:" not in r.stderr
