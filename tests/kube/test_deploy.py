"""Deploy, wait for Ready, rollout failures, retarget and clean — against the fake API server."""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Iterator

import pytest
from fakeapi import BY_PATH

from kstap.errors import ExitCode, WorkerFailure
from kstap.kube import deploy
from kstap.kube import manifests as mf
from kstap.kube.client import Forbidden


def spec(**kw) -> mf.WorkerSpec:
    base = {"run_id": "r1", "token": "t" * 64, "nodes": ["node-a", "node-b"], "seed": 7,
            "image": "registry.example/kstap:0.1.0"}
    return mf.WorkerSpec(**{**base, **kw})


class FakeClock:
    """Time that only moves when the code under test sleeps: timeouts without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(seconds, 0.001)


def kinds(cluster, plural: str, ns: str | None = None) -> list[str]:
    return [o["metadata"]["name"] for o in cluster.objects(plural, ns)]


def test_deploy_puts_a_ready_worker_on_each_target_node(cluster, kube) -> None:
    s = spec()
    workers = deploy.deploy(kube, s, timeout=5)
    assert sorted(workers) == ["node-a", "node-b"]
    for node, w in workers.items():
        assert w.namespace == "kstap" and w.name.startswith("kstap-worker-r1-") and w.port == 8900
        pod = cluster.get("pods", "kstap", w.name)
        assert pod["spec"]["nodeName"] == node and pod["status"]["podIP"] == w.ip
    assert kinds(cluster, "daemonsets", "kstap") == ["kstap-worker-r1"]
    assert kinds(cluster, "secrets", "kstap") == ["kstap-token-r1"]
    assert kinds(cluster, "serviceaccounts", "kstap") == ["kstap-worker-r1"]
    assert kinds(cluster, "clusterroles") == kinds(cluster, "clusterrolebindings") == []  # the workers need none
    ns = cluster.get("namespaces", None, "kstap")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert not any(p["spec"].get("nodeName") == "node-c" for p in cluster.objects("pods", "kstap"))


def test_apply_twice_replaces(cluster, kube) -> None:
    s = spec()
    first = deploy.apply(kube, mf.all_objects(s))
    assert first[0] == "created namespace kstap" and all(line.startswith("created") for line in first)
    s.memory_budget = 256 << 20
    second = deploy.apply(kube, mf.all_objects(s))
    assert all(line.startswith("replaced") for line in second), second
    ds = cluster.get("daemonsets", "kstap", "kstap-worker-r1")
    assert ds["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "256Mi"
    assert ds["metadata"]["generation"] == 2


def test_a_namespace_kstap_did_not_create_is_left_alone(cluster, kube) -> None:
    cluster.add_namespace("tools", labels={"team": "ops"})
    lines = deploy.apply(kube, [mf.namespace(spec(namespace="tools"))])
    assert lines == ["kept namespace tools (not kstap's)"]
    assert cluster.get("namespaces", None, "tools")["metadata"]["labels"] == {
        "kubernetes.io/metadata.name": "tools", "team": "ops"}


@pytest.mark.parametrize("behaviour, reason", [("image-pull", "ImagePullBackOff"), ("err-image-pull", "ErrImagePull")])
def test_image_pull_failure_is_exit_4_naming_the_image(cluster, kube, behaviour: str, reason: str) -> None:
    cluster.worker_behaviour["node-b"] = behaviour
    clock = FakeClock()
    with pytest.raises(WorkerFailure) as err:
        deploy.deploy(kube, spec(), timeout=60, sleep=clock.sleep)
    e = err.value
    assert e.code == ExitCode.WORKER
    assert e.message.startswith(f"the worker image 'registry.example/kstap:0.1.0' cannot be pulled on node node-b: "
                                f"{reason}")
    assert e.hint and "--worker-image" in e.hint
    assert clock.slept == []  # failed at once, not after the timeout


def test_crash_loop_is_exit_4_with_the_logs_command(cluster, kube) -> None:
    cluster.worker_behaviour["node-a"] = "crashloop"
    with pytest.raises(WorkerFailure) as err:
        deploy.deploy(kube, spec(), timeout=60)
    assert "keeps crashing (CrashLoopBackOff, exit code 3, Error, 4 restarts)" in err.value.message
    assert err.value.hint and err.value.hint.startswith("see why: kubectl logs -n kstap kstap-worker-r1-")
    assert err.value.hint.endswith("--previous")


def test_config_error_is_exit_4(cluster, kube) -> None:
    cluster.worker_behaviour["node-a"] = "config-error"
    with pytest.raises(WorkerFailure, match="cannot start: CreateContainerConfigError"):
        deploy.deploy(kube, spec(), timeout=60)


def test_not_ready_in_time_names_each_nodes_reason(cluster, kube) -> None:
    cluster.worker_behaviour.update({"node-a": "unschedulable", "node-b": "starting"})
    s = spec(nodes=["node-a", "node-b", "node-c"])
    cluster.worker_behaviour["node-c"] = "none"
    deploy.apply(kube, mf.all_objects(s))
    clock = FakeClock()
    with pytest.raises(WorkerFailure) as err:
        deploy.wait_ready(kube, s, timeout=30, poll=1.0, clock=clock, sleep=clock.sleep)
    e = err.value
    assert e.code == ExitCode.WORKER
    assert e.message == (
        "3 of 3 workers not Ready after 30 s — "
        "node-a: Pending (Unschedulable: 0/3 nodes are available: 1 Insufficient memory.); "
        "node-b: Pending (ContainerCreating); node-c: no worker pod yet")
    assert e.hint and "describe daemonset kstap-worker-r1" in e.hint
    assert sum(clock.slept) == pytest.approx(30, abs=1.01) and len(clock.slept) >= 29


def test_some_ready_others_late(cluster, kube) -> None:
    cluster.worker_behaviour["node-b"] = "starting"
    s = spec()
    deploy.apply(kube, mf.all_objects(s))
    clock = FakeClock()
    with pytest.raises(WorkerFailure, match=r"^1 of 2 workers not Ready after 5 s — node-b: Pending"):
        deploy.wait_ready(kube, s, timeout=5, clock=clock, sleep=clock.sleep)


def test_forbidden_create_names_the_verb(cluster, kube) -> None:
    cluster.forbid("create", "daemonsets", "kstap")
    with pytest.raises(Forbidden) as err:
        deploy.deploy(kube, spec(), timeout=5)
    assert err.value.code == ExitCode.ENVIRONMENT
    assert err.value.message.startswith("forbidden: RBAC does not allow 'create' on daemonsets in namespace 'kstap'")
    assert 'User "kstap-test" cannot create resource "daemonsets" in API group "apps"' in err.value.message
    assert err.value.hint == ("ask a cluster admin for 'create' on 'daemonsets'; "
                              "check with: kubectl auth can-i create daemonsets -n kstap")


def test_forbidden_namespace_says_cluster_wide(cluster, kube) -> None:
    cluster.forbid("create", "namespaces")
    with pytest.raises(Forbidden) as err:
        deploy.apply(kube, mf.all_objects(spec()))
    assert "'create' on namespaces cluster-wide" in err.value.message
    assert err.value.hint and "kubectl auth can-i create namespaces" in err.value.hint


def test_retarget_adds_a_node_without_restarting_the_others(cluster, kube) -> None:
    s = spec()
    before = deploy.deploy(kube, s, timeout=5)
    added = deploy.retarget(kube, s, ["node-a", "node-b", "node-c"], timeout=5)
    assert sorted(added) == ["node-a", "node-b", "node-c"]
    assert added["node-a"].name == before["node-a"].name and added["node-b"].name == before["node-b"].name
    ds = cluster.get("daemonsets", "kstap", s.name)
    assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}
    shrunk = deploy.retarget(kube, s, ["node-c"], timeout=5)
    assert shrunk == {}  # nothing new to wait for
    assert [p["spec"]["nodeName"] for p in cluster.objects("pods", "kstap")] == ["node-c"]


def test_retarget_that_fails_leaves_the_nodes_so_asking_again_waits_again(cluster, kube) -> None:
    s = spec()
    deploy.deploy(kube, s, timeout=5)
    cluster.worker_behaviour["node-c"] = "image-pull"
    with pytest.raises(WorkerFailure, match="cannot be pulled on node node-c"):
        deploy.retarget(kube, s, ["node-a", "node-b", "node-c"], timeout=5)
    assert s.nodes == ["node-a", "node-b"]  # node-c has no worker yet
    stuck = next(p["metadata"]["name"] for p in cluster.objects("pods", "kstap") if p["spec"]["nodeName"] == "node-c")
    cluster.worker_behaviour["node-c"] = "ready"
    cluster.delete_pod("kstap", stuck)  # the image was pushed; the pod is made again and starts
    again = deploy.retarget(kube, s, ["node-a", "node-b", "node-c"], timeout=5)
    assert sorted(again) == ["node-a", "node-b", "node-c"] and again["node-c"].name != stuck
    assert s.nodes == ["node-a", "node-b", "node-c"]


def test_ready_workers_lists_only_ready_live_pods(cluster, kube) -> None:
    cluster.worker_behaviour["node-b"] = "starting"
    s = spec(nodes=["node-a", "node-b", "node-c"])
    deploy.apply(kube, mf.all_objects(s))
    ready = deploy.ready_workers(kube, s)
    assert sorted(ready) == ["node-a", "node-c"]  # node-b: ContainerCreating
    a = ready["node-a"]
    pod = cluster.get("pods", "kstap", a.name)
    assert (a.node, a.namespace, a.port, a.ip) == ("node-a", "kstap", 8900, pod["status"]["podIP"]) == (
        "node-a", "kstap", 8900, "10.0.0.1")
    node_b = next(p["metadata"]["name"] for p in cluster.objects("pods", "kstap") if p["spec"]["nodeName"] == "node-b")
    assert cluster.mark_ready("kstap", node_b)
    assert sorted(deploy.ready_workers(kube, s)) == ["node-a", "node-b", "node-c"]
    pod["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"  # terminating: no longer a worker to read
    cluster.put(BY_PATH[("", "v1", "pods")], pod, create=False)
    assert sorted(deploy.ready_workers(kube, s)) == ["node-b", "node-c"]
    other = spec(run_id="r2", nodes=["node-a"])
    assert deploy.ready_workers(kube, other) == {}  # another run's workers are not ours


def test_clean_one_run_then_all(cluster, kube) -> None:
    deploy.deploy(kube, spec(run_id="r1"), timeout=5)
    deploy.deploy(kube, spec(run_id="r2", nodes=["node-c"]), timeout=5)
    gone = deploy.clean(kube, "r1")
    assert gone == ["daemonset kstap/kstap-worker-r1", "secret kstap/kstap-token-r1",
                    "serviceaccount kstap/kstap-worker-r1"]  # the namespace stays: run r2 still uses it
    assert kinds(cluster, "daemonsets", "kstap") == ["kstap-worker-r2"]
    assert [p["spec"]["nodeName"] for p in cluster.objects("pods", "kstap")] == ["node-c"]
    gone = deploy.clean(kube)
    assert gone[-1] == "namespace kstap" and "daemonset kstap/kstap-worker-r2" in gone
    assert cluster.get("namespaces", None, "kstap") is None
    assert kinds(cluster, "pods", "kstap") == []
    assert deploy.clean(kube) == []  # idempotent
    assert cluster.get("namespaces", None, "a") is not None  # nothing else touched


def test_clean_cli(cli, cluster, kube, kubeconfig) -> None:
    deploy.deploy(kube, spec(run_id="r9"), timeout=5)
    r = cli("clean", "--kubeconfig", str(kubeconfig), "--run", "r9")
    assert r.code == 0, r.err
    assert r.out.splitlines()[0] == "deleted daemonset kstap/kstap-worker-r9"
    assert r.out.splitlines()[-1] == "deleted namespace kstap"
    r = cli("clean", "--kubeconfig", str(kubeconfig))
    assert r.code == 0 and r.out == "" and "nothing to clean" in r.err
    r = cli("clean", "--kubeconfig", str(kubeconfig), "--run", "Bad_Id")
    assert r.code == 2 and "bad run id" in r.err


# -- the pod proxy the worker plane uses ------------------------------------------------------------------
class _Streaming(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(3):
            data = f"part{i}:{self.path}:{self.headers.get('X-Kstap-Authorization')}\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        data = b"got " + body
        self.send_response(202)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def local_worker() -> Iterator[tuple[str, int]]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Streaming)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield ("127.0.0.1", srv.server_port)
    srv.shutdown()
    srv.server_close()


def test_pod_proxy_reaches_a_local_worker(cluster, kube, local_worker) -> None:
    cluster.proxy_by_node["node-a"] = local_worker
    workers = deploy.deploy(kube, spec(nodes=["node-a"]), timeout=5)
    w = workers["node-a"]
    resp = kube.core.connect_get_namespaced_pod_proxy_with_path(
        f"{w.name}:{w.port}", w.namespace, "v1/stream", _preload_content=False,
        _headers={"X-Kstap-Authorization": "Bearer secret"})
    assert resp.status == 200
    lines = resp.data.decode().splitlines()
    assert lines == [f"part{i}:/v1/stream:Bearer secret" for i in range(3)]
    conn = http.client.HTTPConnection("127.0.0.1", int(kube.server.rsplit(":", 1)[1]))
    conn.request("POST", f"/api/v1/namespaces/{w.namespace}/pods/{w.name}:{w.port}/proxy/v1/control",
                 body=b'{"rate": 0.5}', headers={"Authorization": f"Bearer {cluster.token}",
                                                 "Content-Type": "application/json"})
    posted = conn.getresponse()
    assert posted.status == 202 and posted.read() == b'got {"rate": 0.5}'
    conn.close()
    proxied = [r for r in cluster.requests if r.resource == "pods/proxy"]
    assert proxied and proxied[0].verb == "get" and proxied[0].path == "/v1/stream"


class _Endless(http.server.BaseHTTPRequestHandler):
    """A worker stream that never ends (chunked), like /v1/stream."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for _ in range(2000):
                self.wfile.write(b"1c\r\n" + b"x" * 28 + b"\r\n")
                self.wfile.flush()
                threading.Event().wait(0.005)
        except OSError:
            pass


def test_a_stream_closed_half_read_does_not_poison_the_clients_pool(cluster, kube) -> None:
    """Closing a proxied stream mid-way must not hand its connection (unread chunks on it) back to
    the client's pool: the next API call would read those chunks as its status line."""
    from kstap.remote.transport import ApiServerProxyTransport

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        cluster.add_pod("a", "w-1", "node-a", "10.244.1.99")
        cluster.register_proxy("a", "w-1", ("127.0.0.1", srv.server_port))
        transport = ApiServerProxyTransport(kube.api_client, "a", "w-1", 8900)
        for _ in range(3):
            resp = transport.request("GET", "/v1/stream")
            assert resp.status == 200 and resp.read1(10)
            resp.close()
            pods = kube.core.list_namespaced_pod("a")  # on the same client: its pool is shared
            assert "w-1" in [p.metadata.name for p in pods.items]
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_namespace_still_terminating_is_waited_for_then_made_again(cluster, kube) -> None:
    """Seen on the real cluster: a run right after the previous one's clean finds kstap's namespace
    Terminating, and kube-apiserver refuses anything created in it; deploy waits until it is gone."""
    nsres = BY_PATH[("", "v1", "namespaces")]
    cluster.put(nsres, {"metadata": {"name": "kstap", "labels": dict(mf.MANAGED_BY),
                                     "deletionTimestamp": "2026-01-01T00:00:00Z"},
                        "status": {"phase": "Terminating"}}, create=True)
    gone = threading.Timer(1.0, lambda: cluster.remove(nsres, None, "kstap"))
    gone.start()
    try:
        done = deploy.apply(kube, [mf.namespace(spec())])
    finally:
        gone.cancel()
    assert done == ["created namespace kstap (after the previous one was deleted)"]
    again = cluster.get("namespaces", None, "kstap")
    assert again is not None and "deletionTimestamp" not in again["metadata"]
