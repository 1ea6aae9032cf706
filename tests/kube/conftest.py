"""Fixtures for the Kubernetes tests: a fake API server on 127.0.0.1 and the real client pointed at it.

The standard cluster (:func:`standard_cluster`) has three nodes and pods in four namespaces:

============  ==========  =========================  =====================================
namespace     pod         node                       IPs / state
============  ==========  =========================  =====================================
a             web-1       node-a                     10.244.1.10
a             web-2       node-b                     10.244.2.10
a             db-0        node-b                     10.244.2.11
a             pending-1   (none)                     Pending, no IP
b             api-1       node-a                     10.244.1.20
b             api-2       node-c                     10.244.3.20, fd00:3::20 (dual stack)
c             web-9       node-c                     10.244.3.30
default       hello-1     node-c                     10.244.3.40
kube-system   coredns-1   node-a                     10.244.1.2
kube-system   proxy-1     node-a                     hostNetwork (10.0.0.1, the node's IP)
============  ==========  =========================  =====================================
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakeapi import FakeApiServer, FakeCluster

from kstap.kube.client import Backoff, Kube, KubeSettings, connect

FAST_BACKOFF = Backoff(initial=0.01, factor=2.0, maximum=0.05, attempts=4)


def standard_cluster() -> FakeCluster:
    c = FakeCluster()
    for name, ip in (("node-a", "10.0.0.1"), ("node-b", "10.0.0.2"), ("node-c", "10.0.0.3")):
        c.add_node(name, ip)
    for ns in ("a", "b", "c", "default", "kube-system"):
        c.add_namespace(ns)
    c.add_pod("a", "web-1", "node-a", "10.244.1.10")
    c.add_pod("a", "web-2", "node-b", "10.244.2.10")
    c.add_pod("a", "db-0", "node-b", "10.244.2.11")
    c.add_pod("a", "pending-1", None, None, phase="Pending")
    c.add_pod("b", "api-1", "node-a", "10.244.1.20")
    c.add_pod("b", "api-2", "node-c", "10.244.3.20", ipv6="fd00:3::20")
    c.add_pod("c", "web-9", "node-c", "10.244.3.30")
    c.add_pod("default", "hello-1", "node-c", "10.244.3.40")
    c.add_pod("kube-system", "coredns-1", "node-a", "10.244.1.2")
    c.add_pod("kube-system", "proxy-1", "node-a", "10.0.0.1", host_network=True)
    return c


@pytest.fixture
def cluster() -> FakeCluster:
    return standard_cluster()


@pytest.fixture
def apiserver(cluster: FakeCluster) -> Iterator[FakeApiServer]:
    with FakeApiServer(cluster) as server:
        yield server


@pytest.fixture(autouse=True)
def no_real_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never read the developer's own kubeconfig or service account."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


@pytest.fixture
def kubeconfig(apiserver: FakeApiServer, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig", extra_contexts={"other": "b"})


@pytest.fixture
def settings(kubeconfig: Path) -> KubeSettings:
    return KubeSettings(kubeconfig=str(kubeconfig), request_timeout=5.0, watch_timeout=30, backoff=FAST_BACKOFF)


@pytest.fixture
def kube(settings: KubeSettings) -> Iterator[Kube]:
    k = connect(settings)
    yield k
    k.close()
