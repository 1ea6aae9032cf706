"""Real traffic for the demo lab: a server (HTTP/1.1, DNS, UDP sink) and a paced client.

    python -m kstap.demo.traffic serve --address 10.213.77.2
    python -m kstap.demo.traffic client --server 10.213.77.2 --duration 10 --udp-pps 200

The server prints ``READY`` on stdout once every socket is bound, then runs until SIGTERM/SIGINT
(or ``--lifetime`` seconds, a safety bound). The client sends for ``--duration`` seconds (or until
SIGTERM/SIGINT), then prints one JSON line of what it sent and exits by itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

import dpkt

DEMO_ZONE = "demo.kstap.test"
"""Names the DNS server answers for (``.test`` is reserved, RFC 2606: it never leaks anywhere)."""
ZONE_HOSTS = ("www", "api", "db", "cache")
HTTP_PORT = 80
DNS_PORT = 53
SINK_PORT = 9
"""The UDP flood goes to the discard port (RFC 863); the server reads and drops it."""
IO_TIMEOUT = 1.0
"""Seconds any single socket operation may block, so every loop notices its deadline."""


# --- DNS -------------------------------------------------------------------------------------------

def demo_zone(address: str) -> dict[str, str]:
    """The zone's A records: every demo host points at the server's address."""
    return {f"{host}.{DEMO_ZONE}": address for host in ZONE_HOSTS}


def dns_answer(query: bytes, zone: Mapping[str, str], ttl: int = 60) -> bytes | None:
    """The response to one DNS query: A records from ``zone``, NXDOMAIN for unknown names.

    Returns None for anything that is not a well-formed query (the server then stays silent).
    """
    try:
        q = dpkt.dns.DNS(query)
    except (dpkt.UnpackError, IndexError, ValueError):
        return None
    if q.qr != dpkt.dns.DNS_Q or len(q.qd) != 1:
        return None
    question = q.qd[0]
    r = dpkt.dns.DNS(id=q.id, qd=[question], an=[], ns=[], ar=[])
    r.qr, r.opcode, r.rd, r.aa, r.ra = dpkt.dns.DNS_R, q.opcode, q.rd, 1, 0
    address = zone.get(question.name.lower().rstrip("."))
    if address is None:
        r.rcode = dpkt.dns.DNS_RCODE_NXDOMAIN
    elif question.type == dpkt.dns.DNS_A and question.cls == dpkt.dns.DNS_IN:
        r.an = [dpkt.dns.DNS.RR(name=question.name, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN, ttl=ttl,
                                rlen=4, ip=socket.inet_aton(address))]
    return bytes(r)  # a known name asked for another type: NOERROR with no answer (NODATA)


def dns_query(name: str, qid: int) -> bytes:
    """A recursive A query for ``name``."""
    return bytes(dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A)]))


# --- HTTP ------------------------------------------------------------------------------------------

class DemoHandler(BaseHTTPRequestHandler):
    """A few small JSON/text resources over keep-alive HTTP/1.1."""

    protocol_version = "HTTP/1.1"
    server_version = "kstap-demo/1"
    timeout = 10  # an idle keep-alive connection is closed after this many seconds
    wbufsize = 1 << 16  # headers and body leave in one segment (flushed after each request)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(200, "text/plain", b"hello from the kstap demo\n")
        elif path == "/health":
            self._send(200, "text/plain", b"ok\n")
        elif path == "/api/items":
            self._json(200, {"items": [{"id": i, "name": f"item-{i}"} for i in range(1, 4)]})
        elif path.startswith("/api/items/") and path.rsplit("/", 1)[1].isdigit():
            n = int(path.rsplit("/", 1)[1])
            self._json(200, {"id": n, "name": f"item-{n}", "price": n * 3 % 17})
        else:
            self._json(404, {"error": "not found", "path": path})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 1 << 16))
        if self.path == "/api/echo":
            self._json(200, {"received": len(body)})
        else:
            self._json(404, {"error": "not found", "path": self.path})

    def _json(self, status: int, obj: object) -> None:
        self._send(status, "application/json", json.dumps(obj).encode() + b"\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the capture is the log."""


def http_server(address: str, port: int) -> ThreadingHTTPServer:
    """A bound (not yet serving) threading HTTP/1.1 server; port 0 picks a free one."""
    httpd = ThreadingHTTPServer((address, port), DemoHandler)
    httpd.daemon_threads = True
    return httpd


# --- server ----------------------------------------------------------------------------------------

def _udp_socket(address: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, port))
    s.settimeout(0.2)
    return s


def _dns_loop(sock: socket.socket, zone: Mapping[str, str], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            data, peer = sock.recvfrom(4096)
        except TimeoutError:
            continue
        except OSError:
            return
        reply = dns_answer(data, zone)
        if reply is not None:
            try:
                sock.sendto(reply, peer)
            except OSError:
                continue


def _sink_loop(sock: socket.socket, stop: threading.Event) -> None:
    buf = bytearray(65536)
    while not stop.is_set():
        try:
            sock.recv_into(buf)
        except TimeoutError:
            continue
        except OSError:
            return


def _stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, handle)


class DemoServer:
    """HTTP/1.1, DNS and the UDP sink on one address, each on its own thread.

    Port 0 picks a free port (tests); :attr:`ports` tells which were bound.
    """

    def __init__(self, address: str, http_port: int = HTTP_PORT, dns_port: int = DNS_PORT,
                 sink_port: int = SINK_PORT) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = []
        self.httpd = http_server(address, http_port)
        try:
            self.socks = [_udp_socket(address, dns_port), _udp_socket(address, sink_port)]
        except OSError:
            self.close()
            raise
        self.threads = [
            threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True),
            threading.Thread(target=_dns_loop, args=(self.socks[0], demo_zone(address), self.stop),
                             daemon=True),
            threading.Thread(target=_sink_loop, args=(self.socks[1], self.stop), daemon=True)]

    @property
    def ports(self) -> tuple[int, int, int]:
        """The bound (HTTP, DNS, sink) ports."""
        dns, sink = (int(s.getsockname()[1]) for s in self.socks)
        return int(self.httpd.server_address[1]), dns, sink

    def __enter__(self) -> DemoServer:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stop.set()
        if self.threads and self.threads[0].is_alive():
            self.httpd.shutdown()
        for t in self.threads:
            if t.is_alive():
                t.join(timeout=2)
        self.httpd.server_close()
        for s in self.socks:
            s.close()


def serve(address: str, http_port: int, dns_port: int, sink_port: int, lifetime: float) -> int:
    """Run the servers until SIGTERM/SIGINT or ``lifetime`` seconds; print READY once bound."""
    stop = threading.Event()
    _stop_on_signals(stop)
    with DemoServer(address, http_port, dns_port, sink_port):
        print("READY", flush=True)
        stop.wait(lifetime)
    return 0


# --- client ----------------------------------------------------------------------------------------

@dataclass
class ClientCounts:
    """What the client sent; each field is written by one thread only."""

    http_requests: int = 0
    http_errors: int = 0
    dns_queries: int = 0
    dns_answers: int = 0
    dns_nxdomain: int = 0
    udp_datagrams: int = 0
    udp_errors: int = 0


_REQUESTS: tuple[tuple[str, str], ...] = (
    ("GET", "/"), ("GET", "/api/items"), ("GET", "/api/items/7"), ("POST", "/api/echo"),
    ("GET", "/health"), ("GET", "/api/items/42"), ("GET", "/missing"),
)


def paced(rate: float, deadline: float, stop: threading.Event, action: Callable[[int], None]) -> None:
    """Call ``action(i)`` about ``rate`` times a second until ``deadline`` (monotonic) or ``stop``.

    Sends in small bursts when a wake-up comes late, but never tries to catch up more than
    ~20 ms of backlog, and sleeps at least 1 ms between bursts so CPU use stays modest.
    """
    if rate <= 0:
        return
    start = time.monotonic()
    slot = 0
    burst = max(1, int(rate * 0.02))
    while not stop.is_set():
        now = time.monotonic()
        if now >= deadline:
            return
        due = int((now - start) * rate) + 1
        slot = max(slot, due - burst)
        while slot < due:
            action(slot)
            slot += 1
        now = time.monotonic()
        stop.wait(max(0.001, min(start + slot / rate, deadline) - now))


class _HttpClient:
    """Keep-alive HTTP/1.1 requests; a new connection every ``per_conn`` requests."""

    def __init__(self, host: str, port: int, per_conn: int, counts: ClientCounts) -> None:
        self.host, self.port, self.per_conn, self.counts = host, port, max(1, per_conn), counts
        self.conn: http.client.HTTPConnection | None = None
        self.on_conn = 0

    def __call__(self, i: int) -> None:
        method, path = _REQUESTS[i % len(_REQUESTS)]
        body = json.dumps({"n": i, "note": "kstap demo"}).encode() if method == "POST" else None
        headers = {"Content-Type": "application/json"} if body else {}
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=IO_TIMEOUT)
                self.on_conn = 0
            self.conn.request(method, path, body=body, headers=headers)
            self.conn.getresponse().read()
            self.counts.http_requests += 1
            self.on_conn += 1
        except (OSError, http.client.HTTPException):
            self.counts.http_errors += 1
            self.close()
            return
        if self.on_conn >= self.per_conn:
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class _DnsClient:
    """One query per fresh socket (a new source port each time, as stub resolvers do)."""

    def __init__(self, server: str, port: int, counts: ClientCounts) -> None:
        self.server, self.port, self.counts = server, port, counts
        self.names = [*demo_zone(server), f"nosuch.{DEMO_ZONE}"]

    def __call__(self, i: int) -> None:
        qid = (i * 7919 + 1) & 0xFFFF
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(IO_TIMEOUT / 2)
            try:
                s.sendto(dns_query(self.names[i % len(self.names)], qid), (self.server, self.port))
                self.counts.dns_queries += 1
                reply = dpkt.dns.DNS(s.recv(4096))
            except (OSError, dpkt.UnpackError):
                return
        if reply.id == qid:
            self.counts.dns_answers += 1
            if reply.rcode == dpkt.dns.DNS_RCODE_NXDOMAIN:
                self.counts.dns_nxdomain += 1


class _UdpFlood:
    """Small datagrams round-robin over ``flows`` sockets (one flow per source port)."""

    def __init__(self, server: str, port: int, flows: int, size: int, counts: ClientCounts) -> None:
        self.counts, self.size = counts, max(16, size)
        self.socks = []
        for _ in range(max(1, flows)):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect((server, port))
            self.socks.append(s)

    def __call__(self, i: int) -> None:
        payload = f"kstap-demo {i:010d} ".encode().ljust(self.size, b".")
        try:
            self.socks[i % len(self.socks)].send(payload)
            self.counts.udp_datagrams += 1
        except OSError:  # a full socket buffer at high rates: count it, do not wait
            self.counts.udp_errors += 1

    def close(self) -> None:
        for s in self.socks:
            s.close()


@dataclass
class ClientSettings:
    """Rates are per second; 0 turns a kind of traffic off."""

    server: str
    duration: float = 10.0
    http_rps: float = 20.0
    dns_qps: float = 10.0
    udp_pps: float = 200.0
    requests_per_conn: int = 10
    udp_flows: int = 8
    udp_size: int = 64
    http_port: int = HTTP_PORT
    dns_port: int = DNS_PORT
    sink_port: int = SINK_PORT


def run_client(cfg: ClientSettings, stop: threading.Event | None = None) -> ClientCounts:
    """Send all three kinds of traffic in parallel until ``cfg.duration`` passes or ``stop`` is set."""
    stop = stop or threading.Event()
    counts = ClientCounts()
    deadline = time.monotonic() + cfg.duration
    http = _HttpClient(cfg.server, cfg.http_port, cfg.requests_per_conn, counts)
    flood = _UdpFlood(cfg.server, cfg.sink_port, cfg.udp_flows, cfg.udp_size, counts)
    jobs: list[tuple[float, Callable[[int], None]]] = [
        (cfg.http_rps, http), (cfg.dns_qps, _DnsClient(cfg.server, cfg.dns_port, counts)),
        (cfg.udp_pps, flood)]
    threads = [threading.Thread(target=paced, args=(rate, deadline, stop, job), daemon=True)
               for rate, job in jobs]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():  # short joins so the main thread still runs signal handlers
                t.join(timeout=0.2)
    finally:
        stop.set()
        http.close()
        flood.close()
    return counts


# --- command line ----------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kstap.demo.traffic", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("serve", help="HTTP/1.1 + DNS + UDP sink; prints READY when bound")
    s.add_argument("--address", required=True, help="bind here; the DNS zone answers with it too")
    s.add_argument("--lifetime", type=float, default=600.0, help="exit after SECS even without a signal")
    c = sub.add_parser("client", help="paced HTTP, DNS and UDP traffic; prints JSON counts at the end")
    c.add_argument("--server", required=True)
    c.add_argument("--duration", type=float, default=10.0)
    c.add_argument("--http-rps", type=float, default=20.0)
    c.add_argument("--dns-qps", type=float, default=10.0)
    c.add_argument("--udp-pps", type=float, default=200.0)
    c.add_argument("--requests-per-conn", type=int, default=10)
    c.add_argument("--udp-flows", type=int, default=8)
    c.add_argument("--udp-size", type=int, default=64)
    for q in (s, c):
        q.add_argument("--http-port", type=int, default=HTTP_PORT)
        q.add_argument("--dns-port", type=int, default=DNS_PORT)
        q.add_argument("--sink-port", type=int, default=SINK_PORT)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.role == "serve":
        return serve(a.address, a.http_port, a.dns_port, a.sink_port, a.lifetime)
    stop = threading.Event()
    _stop_on_signals(stop)
    cfg = ClientSettings(server=a.server, duration=a.duration, http_rps=a.http_rps, dns_qps=a.dns_qps,
                         udp_pps=a.udp_pps, requests_per_conn=a.requests_per_conn, udp_flows=a.udp_flows,
                         udp_size=a.udp_size, http_port=a.http_port, dns_port=a.dns_port,
                         sink_port=a.sink_port)
    counts = run_client(cfg, stop)
    print(json.dumps(asdict(counts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
