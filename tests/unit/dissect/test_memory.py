"""The accounting is honest: what the stage says it holds matches what tracemalloc sees.

Each case builds its packets first, then measures the Python heap growth (tracemalloc) while the
stage takes them, and compares it with the stage's own figure. The constants (FLOW_COST,
CONTEXT_COST, TOMB_COST, PENDING_COST, EXCHANGE_COST, SEG_COST) were set from these measurements;
a test fails if a code change makes them drift by more than 25 %.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import dpkt
import pytest
from dissect_traffic import T0, Conversation, Run, dns_query, make_run, tcp_frame, udp_frame

N = 3000


def ip(i: int) -> str:
    return f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}"


def measure(run: Run, records: list[tuple[int, int, int, bytes, int, int]]) -> tuple[float, float]:
    """(heap growth, accounted growth) while the stage takes ``records``."""
    gc.collect()
    tracemalloc.start()
    try:
        before, acc0 = tracemalloc.get_traced_memory()[0], run.stage.memory
        run.feed(records, batch=1024)
        run.entries.clear()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before, run.stage.memory - acc0


def syn(i: int) -> bytes:
    return tcp_frame(ip(i), "10.200.0.2", 20000 + i % 40000, 80, 1000, 0, dpkt.tcp.TH_SYN)


def rec(i: int, frame: bytes) -> tuple[int, int, int, bytes, int, int]:
    return (T0 + i * 1000, len(frame), len(frame), frame, 0, 0)


def idle_flows() -> tuple[Run, list[tuple[int, int, int, bytes, int, int]]]:
    return make_run(), [rec(i, syn(i)) for i in range(N)]


def http_flows() -> tuple[Run, list[tuple[int, int, int, bytes, int, int]]]:
    recs = []
    for i in range(N):
        c = Conversation(client=ip(i), cport=20000 + i % 40000, t=T0 + i * 10**6).handshake()
        c.send(b"GET /items/%d HTTP/1.1\r\nHost: api.example.test\r\n\r\n" % i)
        c.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        recs += c.records
    return make_run(), recs


def tombstones() -> tuple[Run, list[tuple[int, int, int, bytes, int, int]]]:
    recs = []
    for i in range(N):
        recs.append(rec(2 * i, syn(i)))
        recs.append(rec(2 * i + 1, tcp_frame(ip(i), "10.200.0.2", 20000 + i % 40000, 80, 1001, 0, dpkt.tcp.TH_RST)))
    return make_run(), recs


def dns_pending() -> tuple[Run, list[tuple[int, int, int, bytes, int, int]]]:
    return make_run(), [rec(i, udp_frame(ip(i), "10.200.0.53", 20000 + i % 40000, 53,
                                         dns_query(f"host-{i}.example.test", i))) for i in range(N)]


def pipelined_requests() -> tuple[Run, list[tuple[int, int, int, bytes, int, int]]]:
    c = Conversation().handshake()
    run = make_run()
    run.feed(c.records)
    c.records.clear()
    c.send(b"".join(b"GET /item/%d HTTP/1.1\r\nHost: api.example.test\r\n\r\n" % i for i in range(1000)))
    return run, c.records


def out_of_order_segments() -> tuple[Run, list[tuple[int, int, int, bytes, int, int]]]:
    c = Conversation().handshake()
    c.send(b"POST /x HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n")
    run = make_run(flow_cap=64 << 20)
    run.feed(c.records)
    c.records.clear()
    base = c.cseq
    for i in range(1, 200):  # every other 1000-byte segment: 199 holes, nothing deliverable
        c.c(dpkt.tcp.TH_ACK, bytes([i % 256]) * 1000, seq=base + 2000 * i)
    return run, c.records


CASES: dict[str, Callable[[], tuple[Run, list[tuple[int, int, int, bytes, int, int]]]]] = {
    "idle connections": idle_flows, "HTTP connections after one exchange": http_flows,
    "tombstones": tombstones, "pending DNS queries": dns_pending, "pipelined requests": pipelined_requests,
    "out-of-order segments": out_of_order_segments,
}


@pytest.mark.parametrize("case", list(CASES))
def test_accounted_matches_heap(case: str) -> None:
    run, records = CASES[case]()
    heap, accounted = measure(run, records)
    assert accounted > 0
    ratio = accounted / heap
    assert 0.8 <= ratio <= 1.25, f"{case}: accounted {accounted} vs heap {heap:.0f} ({ratio:.2f})"
