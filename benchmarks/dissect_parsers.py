"""Choosing the dissection building blocks by measurement: HTTP/1 parsers and frame decoders.

HTTP/1 (transactions per second, one CPU, the same byte streams cut in 1448-byte segments):

- ``kstap``: :class:`kstap.dissect.http1.Http1Parser` (incremental, heads only, bodies counted);
- ``httptools``: llhttp (C) through httptools' callback API — one request and one response parser
  per connection, pairing done in Python as a sniffer must;
- ``dpkt.http``: ``dpkt.http.Request``/``Response`` on the bytes buffered so far (not incremental:
  a message is re-parsed as segments arrive until it is whole).

Frame decoding (packets per second): the stage's minimal decoder vs ``dpkt.ethernet.Ethernet``.

    .venv/bin/python benchmarks/dissect_parsers.py            # ~20 s, prints a Markdown table
    .venv/bin/python benchmarks/dissect_parsers.py --quick    # ~3 s

No network, no root.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dpkt

from kstap.dissect.api import Entry, FlowContext
from kstap.dissect.http1 import Http1Parser
from kstap.sampling.flowkey import FlowKey

MSS = 1448
Workload = list[tuple[list[bytes], list[bytes]]]
"""Per transaction: the client's segments, the server's segments."""


def workload(n: int, body: int, chunked_every: int = 4) -> Workload:
    """``n`` keep-alive transactions: browser-like GETs (some POSTs), JSON responses (some chunked)."""
    out: Workload = []
    for i in range(n):
        if i % 5 == 4:
            payload = b'{"n": %d, "note": "benchmark"}' % i
            req = (b"POST /api/items/%d HTTP/1.1\r\nHost: api.example.test\r\nUser-Agent: bench/1.0\r\n"
                   b"Accept: application/json\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                   b"Connection: keep-alive\r\n\r\n" % (i, len(payload))) + payload
        else:
            req = (b"GET /api/items/%d?page=%d HTTP/1.1\r\nHost: api.example.test\r\nUser-Agent: bench/1.0\r\n"
                   b"Accept: application/json\r\nAccept-Encoding: gzip, deflate\r\nAccept-Language: en\r\n"
                   b"Cookie: session=0123456789abcdef\r\nConnection: keep-alive\r\n\r\n" % (i, i % 7))
        data = b"x" * body
        if i % chunked_every == chunked_every - 1:
            resp = (b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n")
        else:
            resp = (b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: application/json\r\nDate: Thu, 01 Jan "
                    b"2026 00:00:00 GMT\r\nContent-Length: %d\r\nCache-Control: no-cache\r\n\r\n" % len(data)) + data
        out.append(([req[j:j + MSS] for j in range(0, len(req), MSS)],
                    [resp[j:j + MSS] for j in range(0, len(resp), MSS)]))
    return out


# -- the three HTTP/1 contenders ---------------------------------------------------------------------

def run_kstap(work: Workload) -> int:
    key = FlowKey(6, b"\n\0\0\1", 40000, b"\n\0\0\2", 80)
    p = Http1Parser(FlowContext("00000000", "10.0.0.1:40000", "10.0.0.2:80", key))
    n = 0
    ts = 0
    for cseg, sseg in work:
        for s in cseg:
            ts += 1000
            n += len(p.feed(0, s, ts))
        for s in sseg:
            ts += 1000
            n += len(p.feed(1, s, ts))
    return n


def run_httptools(work: Workload) -> int:
    import httptools

    done: list[Entry] = []
    pending: deque[dict[str, object]] = deque()

    class Req:
        def __init__(self) -> None:
            self.cur: dict[str, object] = {}

        def on_message_begin(self) -> None:
            self.cur = {"bytes": 0}

        def on_url(self, url: bytes) -> None:
            self.cur["path"] = url.decode("utf-8", "backslashreplace")

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() == b"host":
                self.cur["host"] = value.decode()

        def on_headers_complete(self) -> None:
            self.cur["method"] = req.get_method().decode()

        def on_message_complete(self) -> None:
            pending.append(self.cur)

    class Resp:
        def on_headers_complete(self) -> None:
            pass

        def on_message_complete(self) -> None:
            r = pending.popleft()
            done.append(Entry(time=0.0, flow_id="0", protocol="http/1.1", client="c", server="s",
                              method=str(r["method"]), path=str(r["path"]), status=resp.get_status_code()))

    req = httptools.HttpRequestParser(Req())
    resp = httptools.HttpResponseParser(Resp())
    for cseg, sseg in work:
        for s in cseg:
            req.feed_data(s)
        for s in sseg:
            resp.feed_data(s)
    return len(done)


def run_dpkt(work: Workload) -> int:
    n = 0
    bufs = [b"", b""]
    pending: deque[dpkt.http.Request] = deque()
    for cseg, sseg in work:
        for d, segs in ((0, cseg), (1, sseg)):
            for s in segs:
                bufs[d] += s
                while bufs[d]:
                    try:
                        msg = dpkt.http.Request(bufs[d]) if d == 0 else dpkt.http.Response(bufs[d])
                    except (dpkt.NeedData, dpkt.UnpackError):
                        break
                    bufs[d] = msg.data if isinstance(msg.data, bytes) else b""
                    if d == 0:
                        pending.append(msg)
                    else:
                        r = pending.popleft()
                        Entry(time=0.0, flow_id="0", protocol="http/1.1", client="c", server="s",
                              method=r.method, path=r.uri, status=int(msg.status))
                        n += 1
    return n


# -- frame decoders -------------------------------------------------------------------------------

def frames(n: int) -> list[bytes]:
    import socket

    out = []
    for i in range(n):
        tcp = dpkt.tcp.TCP(sport=40000 + i % 1000, dport=80, seq=i * 1448, ack=1, flags=0x18, win=65535,
                           data=b"y" * (i % 1400))
        ip = dpkt.ip.IP(src=socket.inet_aton("10.0.0.1"), dst=socket.inet_aton("10.0.0.2"), p=6, ttl=64, data=tcp)
        ip.len = len(ip)
        out.append(bytes(dpkt.ethernet.Ethernet(src=b"\2" * 6, dst=b"\4" * 6, type=0x0800, data=bytes(ip))))
    return out


def decode_minimal(fs: list[bytes]) -> int:
    """The stage's decoder without the stage (same code path: link, IPv4, TCP header, payload slice)."""
    import struct

    tcp = struct.Struct("!HHIIBB")
    n = 0
    for data in fs:
        etype = (data[12] << 8) | data[13]
        off = 14
        if etype == 0x0800:
            ihl = (data[off] & 0x0F) * 4
            total = (data[off + 2] << 8) | data[off + 3]
            if ((data[off + 6] & 0x3F) << 8) | data[off + 7]:
                continue
            src, dst = data[off + 12:off + 16], data[off + 16:off + 20]
            l4 = off + ihl
            if data[off + 9] == 6:
                _sport, _dport, _seq, _ack, doff, _flags = tcp.unpack_from(data, l4)
                payload = data[l4 + (doff >> 4) * 4:off + total]
                n += len(payload) + (src < dst)
    return n


def decode_dpkt(fs: list[bytes]) -> int:
    n = 0
    for data in fs:
        eth = dpkt.ethernet.Ethernet(data)
        ip = eth.data
        if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP):
            n += len(ip.data.data) + (ip.src < ip.dst)
    return n


def best_rate(fn: Callable[[], int], items: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return items / min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    n = 2000 if a.quick else 20000
    repeat = 2 if a.quick else 5
    print(f"python {platform.python_version()}, {platform.machine()}, {n} transactions per run, best of {repeat}")
    print()
    print("| workload | kstap Http1Parser | httptools (llhttp) | dpkt.http |")
    print("|---|---:|---:|---:|")
    for label, body in (("small bodies (300 B)", 300), ("16 KiB bodies", 16384)):
        work = workload(n if body < 4096 else n // 4, body)
        count = len(work)
        for fn in (run_kstap, run_httptools, run_dpkt):
            assert fn(work) == count, fn.__name__
        rates = [best_rate(lambda f=fn, w=work: f(w), count, repeat)  # type: ignore[misc]
                 for fn in (run_kstap, run_httptools, run_dpkt)]
        print(f"| {label} | " + " | ".join(f"{r:,.0f} tx/s" for r in rates) + " |")
    fs = frames(50000 if not a.quick else 5000)
    assert decode_minimal(fs) == decode_dpkt(fs)
    r_min = best_rate(lambda: decode_minimal(fs), len(fs), repeat)
    r_dpkt = best_rate(lambda: decode_dpkt(fs), len(fs), repeat)
    print()
    print("| frame decode (Ethernet/IPv4/TCP) | packets per CPU-second |")
    print("|---|---:|")
    print(f"| stage's minimal decoder | {r_min:,.0f} |")
    print(f"| dpkt.ethernet.Ethernet | {r_dpkt:,.0f} |")
    print(f"| ratio | {r_min / r_dpkt:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
