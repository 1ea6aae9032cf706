"""Pod churn during a run: the watch reports changed per-node IP sets; 410 re-lists; lost
connections are re-opened with backoff from the last resourceVersion and later churn is still seen."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs

import pytest
from fakeapi import FakeApiServer, wait_for

from kstap.errors import ExitCode
from kstap.kube.client import ApiUnreachable, Backoff, Forbidden, Kube, KubeSettings, connect
from kstap.kube.targets import PodWatch, TargetChange, Targets, TargetSelection, resolve, watch


@contextmanager
def running(kube: Kube, targets: Targets, *, sleep: Callable[[float], None] | None = None
            ) -> Iterator[tuple[PodWatch, list[TargetChange], list[BaseException]]]:
    changes: list[TargetChange] = []
    errors: list[BaseException] = []
    pw = PodWatch(kube, targets, changes.append, sleep=sleep)

    def run() -> None:
        try:
            pw.run()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield pw, changes, errors
    finally:
        pw.stop()
        t.join(5)
        assert not t.is_alive(), "the watch did not stop"


def watches_open(cluster, n: int) -> bool:
    return wait_for(lambda: len(cluster.watch_requests()) >= n)


def test_churn_changes_the_per_node_filters(cluster, kube) -> None:
    targets = resolve(kube, TargetSelection(namespaces=["a", "b"]))
    before = targets.filters("tcp")
    with running(kube, targets) as (pw, changes, errors):
        assert watches_open(cluster, 2)
        cluster.add_pod("a", "web-3", "node-c", "10.244.3.50")        # a new target on node-c
        assert wait_for(lambda: len(changes) == 1)
        cluster.delete_pod("a", "web-1")                              # node-a loses one
        assert wait_for(lambda: len(changes) == 2)
        cluster.update_pod("b", "api-1", "node-a", "10.244.1.20")     # MODIFIED, same IP: no change
        cluster.add_pod("c", "web-7", "node-b", "10.244.2.77")        # namespace c is not targeted
        cluster.add_pod("a", "late-1", "node-b", None, phase="Pending")  # not capturable yet
        cluster.update_pod("a", "late-1", "node-b", "10.244.2.60")    # now Running with an IP
        assert wait_for(lambda: len(changes) == 3)
        cluster.delete_pod("b", "api-2")                              # node-c: back to web-3 only
        assert wait_for(lambda: len(changes) == 4)
    assert not errors
    first, second, third, fourth = changes
    assert first.nodes == ("node-c",) and [p.name for p in first.added] == ["web-3"] and not first.removed
    assert second.nodes == ("node-a",) and [p.name for p in second.removed] == ["web-1"]
    assert third.nodes == ("node-b",) and [p.name for p in third.added] == ["late-1"]
    assert fourth.nodes == ("node-c",) and [p.name for p in fourth.removed] == ["api-2"]
    after = fourth.targets.filters("tcp")
    assert before["node-a"].expression == "(tcp) and (ip host 10.244.1.10 or ip host 10.244.1.20)"
    assert after["node-a"].expression == "(tcp) and (ip host 10.244.1.20)"
    assert after["node-b"].expression == "(tcp) and (ip host 10.244.2.10 or ip host 10.244.2.11 or ip host 10.244.2.60)"
    assert after["node-c"].expression == "(tcp) and (ip host 10.244.3.50)"
    assert pw.targets.node_ips() == fourth.targets.node_ips()
    assert pw.reconnects == 0 and pw.relists == 0


def test_all_namespaces_watch_respects_exclude_and_regex(cluster, kube) -> None:
    targets = resolve(kube, TargetSelection(all_namespaces=True, exclude=["kube-system"], pod_regex="^web-"))
    with running(kube, targets) as (_, changes, errors):
        assert watches_open(cluster, 1)
        cluster.add_pod("kube-system", "web-sys", "node-a", "10.244.1.99")  # excluded namespace
        cluster.add_pod("b", "api-9", "node-a", "10.244.1.98")              # regex does not match
        cluster.add_pod("default", "web-5", "node-b", "10.244.2.5")
        assert wait_for(lambda: len(changes) == 1)
    assert not errors
    assert [f"{p.namespace}/{p.name}" for p in changes[0].added] == ["default/web-5"]
    assert changes[0].nodes == ("node-b",)


def test_connection_lost_reconnects_with_backoff_and_sees_later_churn(cluster, kube) -> None:
    targets = resolve(kube, TargetSelection(namespaces=["a"]))
    delays: list[float] = []
    with running(kube, targets, sleep=delays.append) as (pw, changes, errors):
        assert watches_open(cluster, 1)
        cluster.add_pod("a", "web-3", "node-c", "10.244.3.50")
        assert wait_for(lambda: len(changes) == 1)
        seen_rv = pw._versions["a"]
        cluster.drop_watches()                           # the API server connection is lost mid-stream
        assert watches_open(cluster, 2)                  # … and re-opened
        cluster.delete_pod("a", "web-2")                 # churn after the reconnect is still seen
        assert wait_for(lambda: len(changes) == 2)
        cluster.drop_watches()
        assert watches_open(cluster, 3)
        cluster.add_pod("a", "web-4", "node-a", "10.244.1.44")
        assert wait_for(lambda: len(changes) == 3)
    assert not errors
    assert pw.reconnects == 2 and delays == [0.01, 0.01]  # attempt 1 after each loss: the initial delay
    reopened = cluster.watch_requests()[1]
    query = parse_qs(reopened.query)
    assert query["resourceVersion"] == [seen_rv] and query["watch"] == ["true"]  # resumes, no re-list
    assert [p.name for p in changes[1].removed] == ["web-2"] and [p.name for p in changes[2].added] == ["web-4"]
    assert pw.relists == 0


def test_410_gone_relists_and_reports_the_difference(cluster, kube) -> None:
    targets = resolve(kube, TargetSelection(namespaces=["a"]))
    done = threading.Event()

    def churn_while_disconnected(_delay: float) -> None:
        # Runs in the watch thread while it waits to reconnect: history moves on and is compacted.
        if not done.is_set():
            done.set()
            cluster.delete_pod("a", "web-1")
            cluster.add_pod("a", "web-8", "node-c", "10.244.3.88")
            cluster.compact()

    with running(kube, targets, sleep=churn_while_disconnected) as (pw, changes, errors):
        assert watches_open(cluster, 1)
        cluster.drop_watches()
        assert wait_for(lambda: len(changes) == 1)
    assert not errors
    change = changes[0]
    assert change.relisted and pw.relists == 1
    assert [p.name for p in change.removed] == ["web-1"] and [p.name for p in change.added] == ["web-8"]
    assert change.nodes == ("node-a", "node-c")
    verbs = [(r.verb, r.resource) for r in cluster.requests]
    assert verbs[-2:] == [("list", "pods"), ("watch", "pods")]  # re-list, then watch from the new version


def test_gives_up_after_the_attempts_with_exit_3(apiserver: FakeApiServer, cluster, settings) -> None:
    settings.backoff = Backoff(initial=0.001, maximum=0.002, attempts=3)
    kube = connect(settings)
    targets = resolve(kube, TargetSelection(namespaces=["a"]))
    delays: list[float] = []
    with running(kube, targets, sleep=delays.append) as (_, _changes, errors):
        assert watches_open(cluster, 1)
        apiserver.stop()                                 # the API server goes away for good
        assert wait_for(lambda: bool(errors), timeout=15)
    assert isinstance(errors[0], ApiUnreachable) and errors[0].code == ExitCode.ENVIRONMENT
    assert "could not reconnect after 3 attempts" in errors[0].message
    assert delays == [0.001, 0.002, 0.002]


def test_forbidden_watch_names_the_verb(cluster, kube) -> None:
    targets = resolve(kube, TargetSelection(namespaces=["b"]))
    cluster.forbid("watch", "pods", "b")
    with pytest.raises(Forbidden) as err:
        PodWatch(kube, targets, lambda c: None).run()
    assert err.value.code == ExitCode.ENVIRONMENT and err.value.verb == "watch"
    assert "'watch' on pods in namespace 'b'" in err.value.message
    assert err.value.hint and "kubectl auth can-i watch pods -n b" in err.value.hint


def test_watch_function_stops_on_the_event(cluster, kube) -> None:
    targets = resolve(kube, TargetSelection(namespaces=["a", "b"]))
    stop = threading.Event()
    seen: list[TargetChange] = []
    t = threading.Thread(target=watch, args=(kube, targets, seen.append), kwargs={"stop": stop}, daemon=True)
    t.start()
    assert watches_open(cluster, 2)
    cluster.add_pod("b", "api-3", "node-b", "10.244.2.33")
    assert wait_for(lambda: len(seen) == 1)
    stop.set()
    t.join(5)
    assert not t.is_alive()


def test_watch_timeout_is_a_normal_reopen(cluster, settings: KubeSettings) -> None:
    settings.watch_timeout = 1                       # the server ends each watch after a second
    kube = connect(settings)
    targets = resolve(kube, TargetSelection(namespaces=["a"]))
    delays: list[float] = []
    with running(kube, targets, sleep=delays.append) as (pw, changes, errors):
        assert wait_for(lambda: len(cluster.watch_requests()) >= 2, timeout=5)
        cluster.add_pod("a", "web-5", "node-a", "10.244.1.55")
        assert wait_for(lambda: len(changes) == 1)
    assert not errors and delays == [] and pw.reconnects == 0  # no backoff for a normal end
