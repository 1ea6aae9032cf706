"""The cluster itself is real: kube-apiserver answers as itself, two kubelets run their nodes, and the host's
network namespace was left alone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from e2e import KUBECONFIG, NODES, kcluster, kget, kubectl


def test_real_server_and_ready_kubelets(cluster: None) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == kcluster.K8S_VERSION
    nodes = kget("nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == NODES
    for n in nodes:
        ready = {c["type"]: c["status"] for c in n["status"]["conditions"]}
        assert ready["Ready"] == "True", n["status"]["conditions"]
        info = n["status"]["nodeInfo"]
        assert info["kubeletVersion"] == kcluster.K8S_VERSION
        assert info["containerRuntimeVersion"].startswith("containerd://")


def test_admission_has_rbac_and_pod_security(cluster: None) -> None:
    """Pod Security admission is on: a hostNetwork pod is refused in a `baseline` namespace."""
    ns = "kstap-e2e-baseline"
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": ns, "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}}))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hostnet", "namespace": ns},
           "spec": {"hostNetwork": True, "containers": [{"name": "c", "image": kcluster.TESTAPP_IMAGE}]}}
    res = kubectl("create", "-f", "-", stdin=json.dumps(pod), check=False)
    assert res.returncode != 0 and "violates PodSecurity" in res.stderr and "hostNetwork" in res.stderr
    res = kubectl("auth", "can-i", "list", "pods", "--as=kstap-e2e-nobody", check=False)
    assert res.stdout.strip() == "no"


def test_host_network_namespace_untouched(cluster: None) -> None:
    """No cluster address, route or interface in the host's namespace; the API server is only behind the relay."""
    addrs = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    for net in ("172.30.250.", "10.250."):
        assert net not in addrs and net not in routes
    links = [link["ifname"] for link in json.loads(addrs)]
    assert not any(name.startswith(("cni", "kbr")) for name in links), links
    assert Path(KUBECONFIG).read_text().count("https://127.0.0.1:") == 1
