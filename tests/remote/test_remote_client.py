"""kstap.remote.client.RemoteSource against in-process workers: merge order, identity, faults."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from kstap.errors import WorkerFailure
from kstap.model import Interface, PacketRecord, SourceStats
from kstap.pipeline.loop import kept
from kstap.remote.client import RemoteSource, WorkerEndpoint
from kstap.remote.hub import ControlRejected, ControlRequest

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def rec(ts_ms: int, ifid: int = 0, data: bytes = b"pkt") -> PacketRecord:
    return (T0 + ts_ms * MS, len(data), len(data) + 10, data, ifid, 0)


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, object]]] = []
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, kind: str, data: dict[str, object]) -> None:
        self.items.append((kind, data))

    def kinds(self) -> list[str]:
        return [str(d.get("kind")) for k, d in self.items if k == "alert"]


def source(workers: list[Any], events: Events | None = None, **kw: Any) -> RemoteSource:
    ev = events or Events()
    kw.setdefault("grace", 0.5)
    return RemoteSource([WorkerEndpoint(w.hub.node, w.url, w.token) for w in workers], connect_timeout=5,
                        on_event=ev, on_entry=lambda node, e: ev.entries.append((node, e)), **kw)


def read_until(src: RemoteSource, n: int, timeout: float = 5.0) -> tuple[list[PacketRecord], dict[int, str]]:
    out: list[PacketRecord] = []
    notes: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        got = src.read(50)
        notes.update({len(out) + i: c for i, c in src.last_comments.items()})
        out += got
    return out, notes


def wait_for(cond: Callable[[], bool], src: RemoteSource, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        src.read(50)
    return cond()


def test_two_workers_merge_in_time_order_with_comments_and_per_node_interfaces(fake_worker) -> None:
    a = fake_worker("node-a", [Interface("veth0"), Interface("veth1", linktype=101)])
    b = fake_worker("node-b")
    src = source([a, b])
    try:
        assert [i.name for i in src.interfaces] == ["node-a/veth0", "node-a/veth1", "node-b/veth0"]
        assert src.interfaces[1].linktype == 101
        a.hub.publish_batch(T0 + 60 * MS, [rec(10), rec(30, 1), rec(50)], {1: "kstap: flow a"})
        b.hub.publish_batch(T0 + 45 * MS, [rec(20), rec(40)], {0: "kstap: flow b"})
        got, notes = read_until(src, 4)
        assert [r[0] for r in got] == [T0 + t * MS for t in (10, 20, 30, 40)]  # 50 waits: b promised only 45
        assert [(r[4], r[5]) for r in got] == [(0, 0), (2, 1), (1, 0), (2, 1)]
        assert notes == {1: "kstap: flow b", 2: "kstap: flow a"}
        assert src.read(100) == []
        b.hub.advance(T0 + 100 * MS)
        got, _ = read_until(src, 1)
        assert [r[0] for r in got] == [T0 + 50 * MS]
        a.hub.publish_ifstats([SourceStats(10, 1, 3), SourceStats(5, 0, 1)])
        b.hub.publish_ifstats([SourceStats(7, 2, 2)])
        assert wait_for(lambda: sum(s.received for s in src.stats()) == 22, src)
        assert src.stats() == [SourceStats(10, 1, 3), SourceStats(5, 0, 1), SourceStats(7, 2, 2)]
        rows = src.worker_stats()
        assert [(w.node, w.captured, w.received, w.dropped, w.alive) for w in rows] == [
            ("node-a", 3, 15, 1, True), ("node-b", 2, 7, 2, True)]
    finally:
        src.close()


def test_events_entries_and_stats_come_through(fake_worker) -> None:
    a = fake_worker("node-a")
    ev = Events()
    src = source([a], ev)
    try:
        a.hub.publish_event("alert", {"level": "warn", "kind": "drops", "message": "kernel dropped 3 packets"})
        a.hub.publish_event("rate_change", {"old": 0.5, "new": 0.25, "reason": "control", "pressure": None})
        a.hub.publish_event("stats", {"captured": 9, "rate": 0.25, "elapsed": 3.0})
        a.hub.publish_entries(['{"protocol":"dns","query_name":"x"}'])
        assert wait_for(lambda: bool(ev.entries) and len(ev.items) >= 2, src)
        assert ("alert", {"level": "warn", "kind": "drops", "message": "node-a: kernel dropped 3 packets"}) in ev.items
        change = next(d for k, d in ev.items if k == "rate_change")
        assert change["node"] == "node-a" and change["new"] == 0.25
        assert ev.entries == [("node-a", {"protocol": "dns", "query_name": "x"})]
        assert src.worker_snapshots()["node-a"] == {"captured": 9, "rate": 0.25, "elapsed": 3.0}
        assert src.worker_stats()[0].rate == 0.25
    finally:
        src.close()


def test_a_dropped_connection_resumes_without_loss_or_duplicates(fake_worker) -> None:
    a = fake_worker("node-a")
    src = source([a], backoff=(0.05, 0.2))
    try:
        a.hub.publish_batch(T0 + 20 * MS, [rec(10)])
        assert len(read_until(src, 1)[0]) == 1
        a.stop_api()
        a.hub.publish_batch(T0 + 40 * MS, [rec(30)])  # while nobody is connected
        a.restart_api()
        a.hub.publish_batch(T0 + 60 * MS, [rec(50)])
        got, _ = read_until(src, 2)
        assert [r[0] for r in got] == [T0 + 30 * MS, T0 + 50 * MS]
        assert src.read(300) == []
        assert src.worker_stats()[0].restarts == 0
    finally:
        src.close()


def test_a_lost_worker_is_reported_and_the_others_go_on(fake_worker) -> None:
    a, b = fake_worker("node-a"), fake_worker("node-b")
    ev = Events()
    src = source([a, b], ev, backoff=(0.05, 0.1))
    try:
        b.stop_api()
        assert wait_for(lambda: "worker-lost" in ev.kinds(), src)
        lost = next(d for k, d in ev.items if d.get("kind") == "worker-lost")
        assert lost["level"] == "critical" and "node-b" in str(lost["message"])
        a.hub.publish_batch(T0 + 20 * MS, [rec(10)])
        assert len(read_until(src, 1)[0]) == 1  # node-b no longer holds the merge back
        assert [w.alive for w in src.worker_stats()] == [True, False]
        b.restart_api()
        assert wait_for(lambda: "worker-reattached" in ev.kinds(), src)
        assert src.worker_states() == {"node-a": "up", "node-b": "up"}
    finally:
        src.close()


def test_a_restarted_worker_keeps_its_interface_and_its_counters_add_up(fake_worker) -> None:
    a = fake_worker("node-a")
    ev = Events()
    src = source([a], ev, backoff=(0.05, 0.1))
    try:
        a.hub.publish_ifstats([SourceStats(10, 1, 10)])
        a.hub.publish_batch(T0 + 20 * MS, [rec(10)])
        read_until(src, 1)
        hub = a.new_run([Interface("veth0")])
        hub.publish_ifstats([SourceStats(4, 0, 4)])
        hub.publish_batch(T0 + 60 * MS, [rec(50)])
        got, _ = read_until(src, 1)
        assert got and got[0][4] == 0
        assert wait_for(lambda: src.stats() == [SourceStats(14, 1, 14)], src)
        assert "worker-restarted" in ev.kinds() and src.worker_stats()[0].restarts == 1
        assert len(src.interfaces) == 1
    finally:
        src.close()


def test_late_packets_are_kept_and_counted(fake_worker) -> None:
    a, b = fake_worker("node-a"), fake_worker("node-b")
    src = source([a, b], max_hold=0.3)
    try:
        a.hub.publish_batch(T0 + 100 * MS, [rec(90)])
        got, _ = read_until(src, 1)  # node-b says nothing: after max_hold it stops holding a back
        assert [r[0] for r in got] == [T0 + 90 * MS]
        b.hub.publish_batch(T0 + 200 * MS, [rec(20)])  # older than what was released
        got, _ = read_until(src, 1)
        assert [r[0] for r in got] == [T0 + 20 * MS]
        assert src.late_packets() == {"node-a": 0, "node-b": 1}
    finally:
        src.close()


def test_the_end_of_a_worker_and_drain(fake_worker) -> None:
    a, b = fake_worker("node-a"), fake_worker("node-b")
    ev = Events()
    src = source([a, b], ev)
    try:
        a.hub.publish_batch(T0 + 10 * MS, [rec(5)])
        a.hub.end("signal", {"captured": 1})
        b.hub.publish_batch(T0 + 8 * MS, [rec(7)])
        got, _ = read_until(src, 2)
        assert [r[0] for r in got] == [T0 + 5 * MS, T0 + 7 * MS]
        assert wait_for(lambda: "worker-ended" in ev.kinds(), src)
        b.hub.publish_batch(T0 + 8 * MS, [rec(9)])  # below nobody's promise yet: drain takes it
        now = time.time_ns()
        b.hub.advance(now + 10**9)
        got = src.drain(20)
        assert [r[0] for r in got] == [T0 + 9 * MS]
    finally:
        src.close()


def test_a_gap_is_reported_with_the_packets_lost(fake_worker) -> None:
    a = fake_worker("node-a", backlog=2000)
    for i in range(50):
        a.hub.publish_batch(T0 + (i + 1) * MS, [rec(i, data=b"x" * 100)])
    ev = Events()
    src = source([a], ev)
    try:
        got, _ = read_until(src, 50, timeout=1.0)
        assert 0 < len(got) < 50
        assert "worker-gap" in ev.kinds()
        assert src.transit_losses() == {"node-a": 50 - len(got)}
    finally:
        src.close()


def test_control_fans_out_and_reports_each_node(fake_worker) -> None:
    def refuse(req: ControlRequest) -> None:
        if req.rate is not None:
            raise ControlRejected(409, "this worker keeps every flow")

    a, b = fake_worker("node-a"), fake_worker("node-b", validate=refuse)
    src = source([a, b])
    try:
        with a.applying_control():
            assert src.set_rate(0.5) == {"node-a": "applied",
                                         "node-b": "refused: HTTP 409: this worker keeps every flow"}
            assert src.set_filter("udp", node="node-a") == {"node-a": "applied"}
            assert a.inbox.current == {"rate": 0.5, "filter": "udp"}
            with pytest.raises(WorkerFailure):
                src.set_filter("udp", node="node-z")
    finally:
        src.close()


def test_no_worker_answering_is_a_worker_failure(fake_worker) -> None:
    a = fake_worker("node-a")
    a.stop_api()
    with pytest.raises(WorkerFailure) as err:
        RemoteSource([WorkerEndpoint("node-a", a.url, a.token)], connect_timeout=0.5, backoff=(0.05, 0.1))
    assert "node-a" in err.value.message and a.token not in err.value.message


def test_a_wrong_token_is_reported_not_leaked(fake_worker) -> None:
    a, b = fake_worker("node-a"), fake_worker("node-b")
    ev = Events()
    src = RemoteSource([WorkerEndpoint("node-a", a.url, a.token), WorkerEndpoint("node-b", b.url, "wrong" * 4)],
                       connect_timeout=1.0, backoff=(0.05, 0.1), on_event=ev)
    try:
        lost = [d for k, d in ev.items if d.get("kind") == "worker-lost"]
        assert lost and "HTTP 401" in str(lost[0]["message"]) and "node-b" in str(lost[0]["message"])
        assert "wrong" not in str(lost[0]["message"])
    finally:
        src.close()


def test_after_the_end_a_new_run_of_the_worker_is_picked_up(fake_worker) -> None:
    a = fake_worker("node-a")
    ev = Events()
    src = source([a], ev, backoff=(0.05, 0.2))
    try:
        a.hub.publish_batch(T0 + 20 * MS, [rec(10)])
        a.hub.end("error", {}, error="interface went down")
        got, _ = read_until(src, 1)
        assert len(got) == 1
        assert wait_for(lambda: "worker-failed" in ev.kinds(), src)
        assert src.read(400) == []  # the ended run is not replayed
        assert ev.kinds().count("worker-failed") == 1
        hub = a.new_run([Interface("veth0")])  # the container restarted
        hub.publish_batch(T0 + 60 * MS, [rec(50)])
        got, _ = read_until(src, 1)
        assert [r[0] for r in got] == [T0 + 50 * MS]
        assert "worker-restarted" in ev.kinds() and src.worker_states() == {"node-a": "up"}
    finally:
        src.close()


def test_comments_follow_their_records_when_a_batch_is_filtered(fake_worker) -> None:
    a = fake_worker("node-a")
    src = source([a])
    try:
        a.hub.publish_batch(T0 + 100 * MS, [rec(10), rec(20), rec(30)], {0: "first", 2: "third"})
        got: list[PacketRecord] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got = src.read(100)
        assert len(got) == 3 and src.last_comments == {0: "first", 2: "third"}
        # the pipeline may filter a batch (at a stop): the comments move with their records
        left, notes = kept(got, src.last_comments, lambda r: r[0] != T0 + 10 * MS)
        assert [r[0] for r in left] == [T0 + 20 * MS, T0 + 30 * MS] and notes == {1: "third"}
    finally:
        src.close()
