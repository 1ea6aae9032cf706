"""``kstap.cli.kube_tap.Churn``: pod churn → per-node filters, a worker for a node that gains targets,
and a replaced worker pod re-attached — against the fake API server with the real client.

The RemoteSource handed to ``Churn`` is a recording fake here (the real one needs workers that
answer); the last test runs the real one, through the fake's pod proxy, against in-process workers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fakeapi import FakeApiServer, wait_for

from kstap.cli.kube_tap import Churn
from kstap.contracts import AlertRaised, Event, relay
from kstap.errors import WorkerFailure
from kstap.kube import deploy
from kstap.kube import manifests as mf
from kstap.kube.nodefilter import MATCH_NOTHING, node_filter
from kstap.kube.targets import PodWatch, TargetChange, Targets, TargetSelection, resolve
from kstap.model import Interface
from kstap.remote.client import RemoteSource, WorkerEndpoint
from kstap.remote.hub import ControlInbox, StreamHub
from kstap.remote.server import WorkerAPI
from kstap.remote.transport import ApiServerProxyTransport

USER_FILTER = "tcp"
SELECTION = TargetSelection(namespaces=["a"])
"""Namespace a: web-1 on node-a; web-2 and db-0 on node-b (see conftest.py); nothing on node-c."""
POLL = 0.02
"""follow_workers' poll interval in these tests (seconds)."""


class RecordingSource:
    """The part of RemoteSource that Churn uses; it records every call instead of reading streams."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = list(nodes)
        self.filters: list[tuple[str | None, str]] = []
        self.added: list[WorkerEndpoint] = []
        self.replaced: list[WorkerEndpoint] = []
        self.calls: list[str] = []
        self.outcome: dict[str, str] = {}
        """Node → what set_filter answers for it (default ``applied``)."""

    def worker_states(self) -> dict[str, str]:
        return {n: "up" for n in self.nodes}

    def set_filter(self, expression: str, node: str | None = None) -> dict[str, str]:
        assert node is not None, "Churn posts filters per node"
        self.filters.append((node, expression))
        self.calls.append(f"filter {node}")
        return {node: self.outcome.get(node, "applied")}

    def add_endpoint(self, endpoint: WorkerEndpoint) -> None:
        if endpoint.name in self.nodes:
            raise WorkerFailure(f"there is already a worker for node {endpoint.name!r}")
        self.nodes.append(endpoint.name)
        self.added.append(endpoint)
        self.calls.append(f"add {endpoint.name}")

    def replace_endpoint(self, endpoint: WorkerEndpoint) -> None:
        self.replaced.append(endpoint)
        self.calls.append(f"replace {endpoint.name}")


class RecordingReporter:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.warnings: list[str] = []

    def event(self, event: Event) -> None:
        self.events.append(event)

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def alerts(self) -> list[tuple[str, str]]:
        return [(e.kind, e.message) for e in self.events if isinstance(e, AlertRaised)]


def new_spec(nodes: list[str]) -> mf.WorkerSpec:
    return mf.WorkerSpec(run_id="r1", token="t" * 64, nodes=nodes, seed=7, image="registry.example/kstap:0.1.0")


def ds_nodes(cluster: Any, spec: mf.WorkerSpec) -> list[str]:
    """The node list of the run's DaemonSet affinity, as stored in the cluster."""
    ds = cluster.get("daemonsets", spec.namespace, spec.name)
    terms = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return [v for t in terms for m in t["matchFields"] for v in m["values"]]


def worker_pod_on(cluster: Any, spec: mf.WorkerSpec, node: str) -> str:
    names = [p["metadata"]["name"] for p in cluster.objects("pods", spec.namespace)
             if p["spec"].get("nodeName") == node]
    assert len(names) == 1, names
    return str(names[0])


def proxied_pod(endpoint: WorkerEndpoint) -> tuple[str, str, int]:
    transport = endpoint.transport
    assert isinstance(transport, ApiServerProxyTransport)
    return transport.namespace, transport.pod, transport.port


def expected(ips: list[str]) -> str:
    return node_filter(USER_FILTER, ips).expression


class Run:
    """A run as ``kube_tap.run`` sets it up: targets resolved, workers deployed, Churn built."""

    def __init__(self, cluster: Any, kube: Any) -> None:
        self.cluster, self.kube = cluster, kube
        self.found = resolve(kube, SELECTION)
        self.spec = new_spec(sorted(self.found.by_node))
        self.pods = deploy.deploy(kube, self.spec, timeout=5)
        self.source = RecordingSource(sorted(self.pods))
        self.reporter = RecordingReporter()
        self.churn = Churn(kube, self.spec, self.source, USER_FILTER, self.reporter, ready_timeout=5)

    def change(self, *nodes: str) -> TargetChange:
        """The change a watch would report for ``nodes``, from the cluster's state now."""
        return TargetChange(resolve(self.kube, SELECTION), (), (), tuple(nodes))


@pytest.fixture
def run(cluster, kube) -> Run:
    return Run(cluster, kube)


@contextmanager
def watching(run: Run) -> Iterator[PodWatch]:
    """The real pod watch feeding ``Churn.on_change``, as ``kube_tap.run`` wires it."""
    pw = PodWatch(run.kube, run.found, run.churn.on_change)
    t = threading.Thread(target=pw.run, daemon=True)
    t.start()
    try:
        assert wait_for(lambda: len(run.cluster.watch_requests()) >= 1)
        yield pw
    finally:
        pw.stop()
        t.join(5)
        assert not t.is_alive(), "the watch did not stop"


def worker_lists(run: Run) -> int:
    """How many times the run's worker pods were listed (each follow_workers poll lists them once)."""
    return sum(1 for r in run.cluster.requests if r.verb == "list" and r.resource == "pods"
               and r.namespace == run.spec.namespace)


def more_polls(run: Run, n: int) -> bool:
    start = worker_lists(run)
    return wait_for(lambda: worker_lists(run) >= start + n)


@contextmanager
def following(run: Run, pods: dict[str, deploy.WorkerPod] | None = None) -> Iterator[threading.Thread]:
    done = threading.Event()
    t = threading.Thread(target=run.churn.follow_workers, args=(done, run.pods if pods is None else pods),
                         kwargs={"every": POLL}, daemon=True)
    t.start()
    try:
        yield t
    finally:
        done.set()
        t.join(5)
        assert not t.is_alive(), "follow_workers did not stop"


# -- on_change ---------------------------------------------------------------------------------------------
def test_a_new_pod_on_a_node_with_a_worker_gets_that_node_a_new_filter(run) -> None:
    with watching(run):
        run.cluster.add_pod("a", "web-3", "node-a", "10.244.1.11")
        assert wait_for(lambda: bool(run.source.filters))
    assert run.source.filters == [("node-a", expected(["10.244.1.10", "10.244.1.11"]))]
    assert run.source.added == [] and run.reporter.alerts() == [] and run.reporter.warnings == []
    assert ds_nodes(run.cluster, run.spec) == ["node-a", "node-b"]  # no retarget


def test_a_node_that_lost_its_last_target_keeps_its_worker_with_a_match_nothing_filter(run) -> None:
    worker_a = worker_pod_on(run.cluster, run.spec, "node-a")
    with watching(run):
        run.cluster.delete_pod("a", "web-1")
        assert wait_for(lambda: bool(run.source.filters))
        run.cluster.delete_pod("a", "db-0")
        assert wait_for(lambda: len(run.source.filters) == 2)
    assert run.source.filters == [("node-a", MATCH_NOTHING), ("node-b", expected(["10.244.2.10"]))]
    assert ds_nodes(run.cluster, run.spec) == ["node-a", "node-b"]
    assert worker_pod_on(run.cluster, run.spec, "node-a") == worker_a  # not restarted, not removed


def test_targets_on_a_node_without_a_worker_grow_the_daemonset_and_attach_the_new_worker(run) -> None:
    before = {n: worker_pod_on(run.cluster, run.spec, n) for n in ("node-a", "node-b")}
    with watching(run):
        run.cluster.add_pod("a", "web-5", "node-c", "10.244.3.55")
        assert wait_for(lambda: bool(run.source.filters))
    assert ds_nodes(run.cluster, run.spec) == ["node-a", "node-b", "node-c"]
    assert run.spec.nodes == ["node-a", "node-b", "node-c"]
    new_pod = worker_pod_on(run.cluster, run.spec, "node-c")
    assert {n: worker_pod_on(run.cluster, run.spec, n) for n in ("node-a", "node-b")} == before  # OnDelete
    [endpoint] = run.source.added
    assert endpoint.name == "node-c" and endpoint.token == run.spec.token
    assert proxied_pod(endpoint) == ("kstap", new_pod, run.spec.port)
    assert run.source.calls == ["add node-c", "filter node-c"]  # attached before its filter is posted
    assert run.source.filters == [("node-c", expected(["10.244.3.55"]))]
    assert run.reporter.alerts() == [
        ("worker-added", f"targets on node node-c: worker kstap/{new_pod} added to the capture")]
    assert run.reporter.warnings == []


def test_a_filter_the_worker_refuses_is_a_warning(run) -> None:
    run.cluster.add_pod("a", "web-3", "node-a", "10.244.1.11")
    run.source.outcome["node-a"] = "refused: HTTP 400: bad filter"
    run.churn.on_change(run.change("node-a"))
    assert run.source.filters == [("node-a", expected(["10.244.1.10", "10.244.1.11"]))]
    assert run.reporter.warnings == [
        "node-a: filter update not applied ({'node-a': 'refused: HTTP 400: bad filter'})"]


def test_a_worker_that_cannot_start_is_a_warning_and_the_next_change_tries_again(run) -> None:
    run.cluster.worker_behaviour["node-c"] = "image-pull"
    run.cluster.add_pod("a", "web-5", "node-c", "10.244.3.55")
    run.cluster.add_pod("a", "web-3", "node-a", "10.244.1.11")
    run.churn.on_change(run.change("node-a", "node-c"))
    [warning] = run.reporter.warnings
    assert warning.startswith("targets appeared on node-c, but no worker started there: the worker image "
                              "'registry.example/kstap:0.1.0' cannot be pulled on node node-c")
    assert run.source.added == [] and run.reporter.alerts() == []
    assert run.source.filters == [("node-a", expected(["10.244.1.10", "10.244.1.11"]))]  # the others go on
    # The image is fixed (pushed): the next churn on node-c must start and attach its worker.
    run.cluster.worker_behaviour["node-c"] = "ready"
    run.cluster.delete_pod("kstap", worker_pod_on(run.cluster, run.spec, "node-c"))  # the kubelet retried
    run.cluster.add_pod("a", "web-6", "node-c", "10.244.3.56")
    run.churn.on_change(run.change("node-c"))
    assert [e.name for e in run.source.added] == ["node-c"]
    assert proxied_pod(run.source.added[0])[1] == worker_pod_on(run.cluster, run.spec, "node-c")
    assert run.source.filters[-1] == ("node-c", expected(["10.244.3.55", "10.244.3.56"]))
    assert [k for k, _ in run.reporter.alerts()] == ["worker-added"]


# -- follow_workers ----------------------------------------------------------------------------------------
def test_a_worker_ready_only_after_the_wait_joins_the_capture_when_it_is(run) -> None:
    """A new node's worker misses the ready timeout (a slow image pull): a warning, and once its pod is
    Ready the poller attaches it with the newest filter for that node, without any further churn."""
    run.churn.ready_timeout = 0.3
    run.cluster.worker_behaviour["node-c"] = "starting"
    run.cluster.add_pod("a", "web-5", "node-c", "10.244.3.55")
    run.churn.on_change(run.change("node-c"))
    [warning] = run.reporter.warnings
    assert warning.startswith("targets appeared on node-c, but no worker started there") and \
        warning.endswith("it joins the capture if it becomes Ready")
    assert run.source.added == [] and run.spec.nodes == ["node-a", "node-b"]
    run.cluster.add_pod("a", "web-6", "node-c", "10.244.3.56")
    run.churn.on_change(run.change("node-c"))  # still not Ready: the second wait fails too
    assert run.source.added == [] and len(run.reporter.warnings) == 2
    with following(run):
        assert more_polls(run, 2)
        assert run.source.added == []
        pod = worker_pod_on(run.cluster, run.spec, "node-c")
        assert run.cluster.mark_ready("kstap", pod)
        assert wait_for(lambda: bool(run.source.added))
        assert more_polls(run, 2)
    [endpoint] = run.source.added
    assert endpoint.name == "node-c" and proxied_pod(endpoint) == ("kstap", pod, run.spec.port)
    assert run.source.filters == [("node-c", expected(["10.244.3.55", "10.244.3.56"]))]
    assert run.reporter.alerts() == [
        ("worker-added", f"targets on node node-c: worker kstap/{pod} added to the capture")]
    assert run.spec.nodes == ["node-a", "node-b", "node-c"] == ds_nodes(run.cluster, run.spec)


def test_a_replaced_worker_pod_is_re_attached(run) -> None:
    old = worker_pod_on(run.cluster, run.spec, "node-b")
    with following(run):
        run.cluster.delete_pod("kstap", old)  # evicted: the DaemonSet controller makes a new one
        assert wait_for(lambda: bool(run.source.replaced))
        new = worker_pod_on(run.cluster, run.spec, "node-b")
        assert new != old
        assert more_polls(run, 3)  # the same pod is not attached twice
    [endpoint] = run.source.replaced
    assert endpoint.name == "node-b" and proxied_pod(endpoint) == ("kstap", new, run.spec.port)
    assert run.reporter.alerts() == [
        ("worker-replaced", f"node node-b: worker pod {old} was replaced by {new}; reading from it")]


def test_a_worker_pod_not_ready_yet_is_not_attached_until_it_is(run) -> None:
    run.cluster.worker_behaviour["node-a"] = "starting"
    old = worker_pod_on(run.cluster, run.spec, "node-a")
    with following(run):
        run.cluster.delete_pod("kstap", old)
        new = worker_pod_on(run.cluster, run.spec, "node-a")
        assert more_polls(run, 3)
        assert run.source.replaced == []  # ContainerCreating: nothing to read from yet
        assert run.cluster.mark_ready("kstap", new)
        assert wait_for(lambda: bool(run.source.replaced))
    assert [proxied_pod(e)[1] for e in run.source.replaced] == [new]


def test_a_worker_attached_by_churn_and_replaced_before_the_next_poll_is_re_attached(run) -> None:
    """on_change attaches node-c's first pod; it is replaced before follow_workers looks: the source
    must move to the new pod, not keep reading from the gone one."""
    pods_at_start = dict(run.pods)
    run.cluster.add_pod("a", "web-5", "node-c", "10.244.3.55")
    run.churn.on_change(run.change("node-c"))
    first = proxied_pod(run.source.added[0])[1]
    run.cluster.delete_pod("kstap", first)
    second = worker_pod_on(run.cluster, run.spec, "node-c")
    with following(run, pods_at_start):
        assert wait_for(lambda: bool(run.source.replaced))
    assert [(e.name, proxied_pod(e)[1]) for e in run.source.replaced] == [("node-c", second)]
    assert ("worker-replaced", f"node node-c: worker pod {first} was replaced by {second}; reading from it") \
        in run.reporter.alerts()


def test_a_new_nodes_worker_is_left_to_on_change(run) -> None:
    """A Ready worker on a node the source does not read from yet is not follow_workers' business."""
    run.spec.nodes = ["node-a", "node-b", "node-c"]
    deploy.apply(run.kube, [mf.daemonset(run.spec)])
    with following(run):
        assert more_polls(run, 3)
    assert run.source.replaced == [] and run.source.added == [] and run.reporter.alerts() == []


def test_the_api_server_going_away_is_waited_out(run, apiserver, cluster) -> None:
    old = worker_pod_on(cluster, run.spec, "node-a")
    failed: list[str] = []
    real = deploy.ready_workers

    def counting(kube: Any, spec: Any) -> Any:
        try:
            return real(kube, spec)
        except Exception as exc:
            failed.append(type(exc).__name__)
            raise

    port = apiserver.httpd.server_port
    with pytest.MonkeyPatch.context() as mp, following(run) as thread:
        mp.setattr(deploy, "ready_workers", counting)
        apiserver.stop()
        assert wait_for(lambda: len(failed) >= 2)
        assert failed[0] == "ApiUnreachable" and thread.is_alive()
        cluster.delete_pod("kstap", old)  # while the API server is away
        with FakeApiServer(cluster, port=port):
            assert wait_for(lambda: bool(run.source.replaced))
            new = worker_pod_on(cluster, run.spec, "node-a")
    assert [(e.name, proxied_pod(e)[1]) for e in run.source.replaced] == [("node-a", new)]


# -- with the real RemoteSource, through the pod proxy -----------------------------------------------------
class Worker:
    """An in-process worker API (no capture) that the fake's pod proxy forwards a node's pods to."""

    def __init__(self, node: str, token: str, iface: str) -> None:
        self.hub = StreamHub(node)
        self.hub.set_hello([Interface(iface)], mode="full")
        self.hub.state = "capturing"
        self.inbox = ControlInbox()
        self.api = WorkerAPI(("127.0.0.1", 0), token, self.hub, self.inbox, heartbeat=0.05, control_wait=0.05)
        self.api.start()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.api.address[1])


def test_churn_with_the_real_remote_source_through_the_pod_proxy(cluster, kube) -> None:
    from kstap.cli.kube_tap import _endpoint

    token = "t" * 64
    workers = {n: Worker(n, token, f"eth-{n[-1]}") for n in ("node-a", "node-b", "node-c")}
    for node, w in workers.items():
        cluster.proxy_by_node[node] = w.address
    found = resolve(kube, SELECTION)
    spec = new_spec(sorted(found.by_node))
    pods = deploy.deploy(kube, spec, timeout=5)
    reporter = RecordingReporter()
    source = RemoteSource([_endpoint(kube, spec, p) for _, p in sorted(pods.items())], connect_timeout=5,
                          grace=5.0, backoff=(0.05, 0.2), on_event=relay(reporter))
    churn = Churn(kube, spec, source, USER_FILTER, reporter, ready_timeout=5)
    done = threading.Event()
    follower = threading.Thread(target=churn.follow_workers, args=(done, pods), kwargs={"every": POLL},
                                daemon=True)
    follower.start()
    try:
        assert [i.name for i in source.interfaces] == ["node-a/eth-a", "node-b/eth-b"]
        cluster.add_pod("a", "web-5", "node-c", "10.244.3.55")
        churn.on_change(TargetChange(resolve(kube, SELECTION), (), (), ("node-c",)))
        assert reporter.warnings == []
        pending = workers["node-c"].inbox.take()  # posted through the pod proxy, queued by the worker
        assert pending is not None and pending.filter == expected(["10.244.3.55"])
        assert wait_until_read(source, lambda: [i.name for i in source.interfaces] ==
                               ["node-a/eth-a", "node-b/eth-b", "node-c/eth-c"])
        assert source.worker_states() == {"node-a": "up", "node-b": "up", "node-c": "up"}
        first = worker_pod_on(cluster, spec, "node-c")
        cluster.delete_pod("kstap", first)
        second = worker_pod_on(cluster, spec, "node-c")
        assert wait_for(lambda: any(r.resource == "pods/proxy" and r.name == second and r.path == "/v1/stream"
                                    for r in cluster.requests))
        assert [k for k, _ in reporter.alerts()] == ["worker-added", "worker-replaced"]
    finally:
        done.set()
        follower.join(5)
        source.close()
        for w in workers.values():
            w.api.close()


def wait_until_read(source: RemoteSource, cond: Any, timeout: float = 5.0) -> bool:
    """Poll ``cond`` while reading (HELLOs are taken in by ``read`` on the caller's thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        source.read(20)
    return bool(cond())


def test_the_runs_targets_are_as_the_tests_above_expect(run) -> None:
    """The tests above rely on this layout of namespace a."""
    assert isinstance(run.found, Targets)
    assert run.found.node_ips() == {"node-a": ["10.244.1.10"], "node-b": ["10.244.2.10", "10.244.2.11"]}
