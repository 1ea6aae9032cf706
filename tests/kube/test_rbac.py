"""Least privilege, proven against the fake API server with RBAC enforced (tests/kube/rbac.py).

- The **workers** need no permission at all: a real worker runs with an API server that refuses
  everything reachable (the in-cluster address and a mounted-style token in its environment) and
  never calls it, nor even imports a Kubernetes client. Hence no Role or ClusterRole for them
  (tests/kube/test_manifests.py checks the objects).
- The **CLI user** needs exactly the permissions docs/kubernetes.md lists ("What the person running
  kstap needs"): the real code paths of ``kstap tap`` (target resolution, the pod watch, deploy, a
  second run in the same namespace, a retarget, the worker API through the pod proxy) and ``kstap
  clean`` (one run, then all) (i) succeed under exactly that table, (ii) each fail with a 403 when any
  single verb of it is taken away (or, for the permissions marked optional, go on without it), and
  (iii) call nothing else: the table equals what the fake recorded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fakeapi import FakeApiServer, FakeCluster, wait_for
from rbac import Authorizer, bindings_for
from rbac_table import Grant, documented

from kstap.errors import KstapError
from kstap.kube import deploy
from kstap.kube import manifests as mf
from kstap.kube.client import Forbidden, Kube, connect
from kstap.kube.targets import PodWatch, TargetSelection, resolve
from kstap.model import Interface
from kstap.remote.hub import ControlInbox, StreamHub
from kstap.remote.server import WorkerAPI
from kstap.remote.transport import ApiServerProxyTransport

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["a", "b"]
WORKER_NS = mf.DEFAULT_NAMESPACE
TOKEN = "rbac-test-token-" + "7" * 32


def where_of(namespace: str | None) -> str:
    return "cluster" if namespace is None else "worker namespace" if namespace == WORKER_NS else "target namespaces"


def bindings(grants: set[Grant]) -> Authorizer:
    concrete = []
    for verb, group, resource, where in grants:
        namespaces = {"cluster": [None], "worker namespace": [WORKER_NS], "target namespaces": TARGETS}[where]
        concrete += [(verb, group, resource, ns) for ns in namespaces]
    return Authorizer(bindings_for(concrete))


def used(cluster: FakeCluster) -> set[Grant]:
    from rbac import GROUPS

    return {(r.verb, GROUPS[r.resource.split("/")[0]], r.resource, where_of(r.namespace)) for r in cluster.requests}


# -- what the CLI does ------------------------------------------------------------------------------------
def watch_once(cluster: FakeCluster, kube: Kube, targets) -> None:
    """Start the pod watch, see it open, stop it; its error (a 403) is raised here. The watch gets its
    own connection pool: the fake API server does not notice a watch the client shut down, and a pooled
    connection that is still inside that watch would swallow the next request (a 5 s timeout)."""
    errors: list[BaseException] = []
    before = len(cluster.watch_requests())
    kube = connect(kube.settings)
    pw = PodWatch(kube, targets, lambda change: None)

    def run() -> None:
        try:
            pw.run()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        assert wait_for(lambda: len(cluster.watch_requests()) > before or bool(errors))
    finally:
        pw.stop()
        t.join(5)
        kube.close()
    if errors:
        raise errors[0]


def worker_api() -> WorkerAPI:
    hub = StreamHub("node")
    hub.set_hello([Interface("veth0")])
    hub.state = "capturing"
    api = WorkerAPI(("127.0.0.1", 0), TOKEN, hub, ControlInbox(), heartbeat=0.05, control_wait=0.0)
    api.start()
    return api


def cli_session(cluster: FakeCluster, kube: Kube, api: WorkerAPI) -> None:
    """The Kubernetes calls of two ``kstap tap`` runs (one retargeted) and ``kstap clean``, in order."""
    found = resolve(kube, TargetSelection(namespaces=list(TARGETS)))
    watch_once(cluster, kube, found)
    for node in ("node-a", "node-b", "node-c"):
        cluster.proxy_by_node[node] = api.address
    run1 = mf.WorkerSpec(run_id="r1", token=TOKEN, nodes=sorted(found.by_node))
    pods = deploy.deploy(kube, run1, timeout=5)
    pod = pods[sorted(pods)[0]]
    transport = ApiServerProxyTransport(kube.api_client, pod.namespace, pod.name, pod.port)
    for method, path, body, status in (("GET", "/v1/stats", None, 200), ("POST", "/v1/control", b'{"rate": 0.5}', 202)):
        resp = transport.request(method, path, headers=transport.auth_headers(TOKEN), body=body)
        try:
            assert resp.status == status, (method, path, resp.status)
        finally:
            resp.close()
    deploy.deploy(kube, mf.WorkerSpec(run_id="r2", token=TOKEN, nodes=["node-a"]), timeout=5)  # namespace exists
    deploy.retarget(kube, run1, ["node-a", "node-b", "node-c"], timeout=5)  # churn: a new node
    assert deploy.clean(kube, "r1")
    assert deploy.clean(kube)


@pytest.fixture
def session(cluster: FakeCluster, kube: Kube):
    api = worker_api()

    def run(grants: set[Grant]) -> Authorizer:
        cluster.requests.clear()
        auth = bindings(grants)
        cluster.authorizer = run.last = auth  # type: ignore[attr-defined]
        try:
            cli_session(cluster, kube, api)
        finally:
            cluster.authorizer = None
        return auth

    yield run
    api.close()


# -- (i) and (iii): exactly the table, and it is enough ------------------------------------------------------
def covers(grant: Grant, call: Grant) -> bool:
    """A documented grant allows a call: same verb, group and resource, and a cluster grant is everywhere."""
    return grant[:3] == call[:3] and grant[3] in (call[3], "cluster")


def test_the_cli_needs_exactly_the_documented_permissions(session, cluster) -> None:
    always, optional, _ = documented()
    table = always | optional
    auth = session(table)
    assert auth.denied == []
    calls = used(cluster)
    undocumented = sorted(c for c in calls if not any(covers(g, c) for g in table))
    unused = sorted(g for g in table if not any(covers(g, c) for c in calls))
    assert not undocumented and not unused, f"called but not documented: {undocumented}; never called: {unused}"


def test_all_namespaces_needs_the_cluster_wide_pod_rows(cluster, kube) -> None:
    always, optional, with_all = documented()
    assert with_all == {("list", "", "pods", "cluster"), ("watch", "", "pods", "cluster")}
    cluster.authorizer = auth = bindings(always | optional | with_all)
    cluster.requests.clear()
    watch_once(cluster, kube, resolve(kube, TargetSelection(all_namespaces=True)))
    assert auth.denied == [] and {g for g in used(cluster) if g[2] == "pods"} == with_all
    for grant in sorted(with_all):
        cluster.authorizer = auth = bindings((always | optional | with_all) - {grant})
        with pytest.raises(Forbidden):
            watch_once(cluster, kube, resolve(kube, TargetSelection(all_namespaces=True)))
        assert [d[0] for d in auth.denied] == [grant[0]]


# -- (ii): every permission is needed ------------------------------------------------------------------------
def grant_ids() -> list[Grant]:
    always, optional, _ = documented()
    return sorted(always | optional)


@pytest.mark.parametrize("grant", grant_ids(), ids=lambda g: f"{g[0]}-{g[2]}-{g[3].replace(' ', '-')}")
def test_taking_any_one_permission_away_breaks_a_real_code_path(session, grant: Grant) -> None:
    always, optional, _ = documented()
    verb, group, resource, _where = grant
    if grant in optional:
        session((always | optional) - {grant})  # the CLI goes on without it (a note says what it skipped)
    else:
        with pytest.raises(KstapError) as err:
            session((always | optional) - {grant})
        assert err.value.code == 3, err.value.message  # exit 3: environment (RBAC)
        assert "forbid" in err.value.message or "refused" in err.value.message
    denied = session.last.denied
    assert denied and all(d[:3] == (verb, group, resource) for d in denied), denied


# -- the workers need nothing ------------------------------------------------------------------------------
def test_a_worker_never_calls_the_api(apiserver: FakeApiServer, cluster: FakeCluster, tmp_path: Path) -> None:
    """A worker pod finds the API server through KUBERNETES_SERVICE_HOST/PORT (and would use a mounted
    token if it had one). Run a real worker (replaying a capture, with dissection) where that address
    is an API server that refuses everything: it captures, and the server sees no request at all."""
    cluster.authorizer = refuse = Authorizer([])
    token = tmp_path / "token"
    token.write_text(TOKEN)
    script = (
        "import json, sys\n"
        "from kstap.config import TapSettings\n"
        "from kstap.worker import Worker, WorkerSettings\n"
        f"s = WorkerSettings(tap=TapSettings(read={str(ROOT / 'examples' / 'sample.pcapng')!r}), "
        f"listen=('127.0.0.1', 0), token={TOKEN!r}, node='node-a', entries=True, linger=0)\n"
        "summary = Worker(s, log=lambda m: None).run()\n"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes' or m.startswith('kstap.kube'))\n"
        "print(json.dumps({'captured': summary.captured, 'modules': mods}))\n")
    host, port = apiserver.url.removeprefix("http://").split(":")
    env = {**os.environ, "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                       check=False, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["captured"] > 0
    assert out["modules"] == []  # no Kubernetes client is even loaded
    assert cluster.requests == [] and refuse.denied == []
    assert not re.search(r"kubernetes|serviceaccount", r.stderr, re.I)
