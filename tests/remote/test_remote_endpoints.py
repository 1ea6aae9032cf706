"""RemoteSource.add_endpoint and replace_endpoint (a node's worker added or moved during a run),
against in-process workers over real HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from kstap.errors import WorkerFailure
from kstap.model import Interface, PacketRecord
from kstap.remote.client import RemoteSource, WorkerEndpoint

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def rec(ts_ms: int, ifid: int = 0) -> PacketRecord:
    return (T0 + ts_ms * MS, 3, 13, b"pkt", ifid, 0)


class Alerts:
    def __init__(self) -> None:
        self.items: list[dict[str, object]] = []

    def __call__(self, kind: str, data: dict[str, object]) -> None:
        if kind == "alert":
            self.items.append(data)

    def kinds(self) -> list[str]:
        return [str(d["kind"]) for d in self.items]


def endpoint(w: Any, name: str | None = None) -> WorkerEndpoint:
    return WorkerEndpoint(name or w.hub.node, w.url, w.token)


def source(workers: list[Any], alerts: Alerts | None = None, **kw: Any) -> RemoteSource:
    kw.setdefault("grace", 1.0)
    return RemoteSource([endpoint(w) for w in workers], connect_timeout=5, on_event=alerts, **kw)


def reading(src: RemoteSource, cond: Callable[[], bool], timeout: float = 5.0) -> list[PacketRecord]:
    """Read (frames are taken in on the caller's thread) until ``cond``; returns what was released."""
    out: list[PacketRecord] = []
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        out += src.read(20)
    assert cond(), "timed out"
    return out


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- add_endpoint ------------------------------------------------------------------------------------------
def test_a_second_worker_for_the_same_node_is_refused(fake_worker) -> None:
    a = fake_worker("node-a")
    other = fake_worker("node-a")
    src = source([a])
    try:
        with pytest.raises(WorkerFailure) as err:
            src.add_endpoint(endpoint(other))
        assert err.value.message == "there is already a worker for node 'node-a'"
        assert len(src.workers) == 1 and src.workers[0].endpoint.base_url == a.url
        assert [t.name for t in threading.enumerate()].count("kstap-remote-node-a") == 1  # no reader started
    finally:
        src.close()


def test_an_added_workers_interfaces_arrive_with_its_hello_and_its_packets_merge(fake_worker) -> None:
    a = fake_worker("node-a")
    c = fake_worker("node-c", [Interface("veth2"), Interface("veth3", linktype=101)])
    alerts = Alerts()
    src = source([a], alerts)
    try:
        assert [i.name for i in src.interfaces] == ["node-a/veth0"]
        src.add_endpoint(endpoint(c))
        reading(src, lambda: len(src.interfaces) == 3)
        assert [i.name for i in src.interfaces] == ["node-a/veth0", "node-c/veth2", "node-c/veth3"]
        assert src.interfaces[2].linktype == 101 and src.interfaces[1].description == "veth2 on node node-c"
        assert src.worker_states() == {"node-a": "up", "node-c": "up"}
        a.hub.publish_batch(T0 + 40 * MS, [rec(10), rec(30)])
        c.hub.publish_batch(T0 + 40 * MS, [rec(20, 1)])
        got: list[PacketRecord] = []
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            got += src.read(20)
        assert [(r[0], r[4], r[5]) for r in got] == [(T0 + 10 * MS, 0, 0), (T0 + 20 * MS, 2, 1),
                                                     (T0 + 30 * MS, 0, 0)]
        assert [(w.node, w.worker, w.captured) for w in src.worker_stats()] == [("node-a", 0, 2), ("node-c", 1, 1)]
        assert alerts.kinds() == []
    finally:
        src.close()


def test_an_added_worker_that_does_not_answer_holds_the_merge_back_only_briefly(fake_worker) -> None:
    a = fake_worker("node-a")
    alerts = Alerts()
    src = source([a], alerts, max_hold=0.3, grace=0.6, backoff=(0.05, 0.1))
    try:
        src.add_endpoint(WorkerEndpoint("node-c", f"http://127.0.0.1:{closed_port()}", a.token))
        start = time.monotonic()
        a.hub.publish_batch(T0 + 40 * MS, [rec(10)])
        got: list[PacketRecord] = []
        while not got and time.monotonic() - start < 5:
            got += src.read(20)
        assert [r[0] for r in got] == [T0 + 10 * MS]
        assert 0.25 <= time.monotonic() - start < 2  # held for max_hold, not for ever
        reading(src, lambda: "worker-lost" in alerts.kinds())
        lost = alerts.items[alerts.kinds().index("worker-lost")]
        assert lost["level"] == "critical" and str(lost["message"]).startswith("worker 1 on node-c stopped answering")
        assert src.worker_states()["node-c"] == "lost"
    finally:
        src.close()


def test_a_filter_reaches_the_added_worker_only(fake_worker) -> None:
    a, c = fake_worker("node-a"), fake_worker("node-c")
    src = source([a])
    try:
        src.add_endpoint(endpoint(c))
        c.api.control_wait = 0.05  # answer 202 at once: no capture loop applies it here
        assert src.set_filter("udp port 53", node="node-c", timeout=3) == {"node-c": "queued"}
        taken = c.inbox.take()
        assert taken is not None and taken.filter == "udp port 53"
        assert a.inbox.take() is None
    finally:
        src.close()


# -- replace_endpoint --------------------------------------------------------------------------------------
def test_replacing_an_endpoint_wakes_a_reader_in_backoff_at_once(fake_worker) -> None:
    old = fake_worker("node-a")
    new = fake_worker("node-a", [Interface("veth0")])
    alerts = Alerts()
    src = source([old], alerts, backoff=(30.0, 30.0), grace=60)  # a reader that pauses waits 30 s
    try:
        old.stop_api()  # the pod is gone: the reader pauses
        reading(src, lambda: src.worker_states()["node-a"] == "reconnecting")
        start = time.monotonic()
        src.replace_endpoint(endpoint(new))
        new.hub.publish_batch(T0 + 40 * MS, [rec(10)])
        got: list[PacketRecord] = []
        while not got and time.monotonic() - start < 5:
            got += src.read(20)
        assert time.monotonic() - start < 3, "the reader slept through its backoff"
        assert [(r[0], r[4], r[5]) for r in got] == [(T0 + 10 * MS, 0, 0)]
        assert src.worker_states() == {"node-a": "up"}
        assert src.workers[0].endpoint.base_url == new.url
        assert [i.name for i in src.interfaces] == ["node-a/veth0"]  # the same node: the same interface
        assert "worker-restarted" in alerts.kinds()  # a new pod is a new run of the worker
    finally:
        src.close()


def test_replacing_an_endpoint_moves_an_open_stream_and_sends_the_filter_again(fake_worker) -> None:
    old, new = fake_worker("node-a"), fake_worker("node-a")
    src = source([old], backoff=(30.0, 30.0), grace=60)
    try:
        for w in (old, new):
            w.api.control_wait = 0.05
        assert src.set_filter("tcp port 80", node="node-a") == {"node-a": "queued"}
        assert old.inbox.take() is not None
        old.hub.publish_batch(T0 + 20 * MS, [rec(10)])
        reading(src, lambda: src.workers[0].captured == 1)
        assert old.hub.stats().readers == 1
        src.replace_endpoint(endpoint(new))  # the old one still serves: its stream is cut
        new.hub.publish_batch(T0 + 40 * MS, [rec(30)])
        reading(src, lambda: src.workers[0].captured == 2, timeout=3)
        assert src.workers[0].restarts == 1
        reading(src, lambda: old.hub.stats().readers == 0 and new.hub.stats().readers == 1, timeout=3)
        resent: list[Any] = []

        def taken() -> bool:  # the capture loop's take(), once
            req = None if resent else new.inbox.take()
            if req is not None:
                resent.append(req)
            return bool(resent)

        reading(src, taken, timeout=3)
        assert resent[-1].filter == "tcp port 80"  # its settings follow it to the new pod
    finally:
        src.close()


def test_replacing_an_unknown_node_is_refused(fake_worker) -> None:
    a, b = fake_worker("node-a"), fake_worker("node-b")
    src = source([a])
    try:
        with pytest.raises(WorkerFailure) as err:
            src.replace_endpoint(endpoint(b))
        assert err.value.message == "no worker for node 'node-b'"
        assert [w.endpoint.name for w in src.workers] == ["node-a"] and src.workers[0].endpoint.base_url == a.url
    finally:
        src.close()
