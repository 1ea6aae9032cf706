"""kstap's objects against the real kube-apiserver's validation and admission (server-side dry run)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import yaml
from e2e import NODES, ROOT, kstap_env, kubectl


def manifests(*args: str) -> list[dict[str, object]]:
    res = subprocess.run([sys.executable, "-m", "kstap", "manifests", *args], capture_output=True, text=True,
                         env=kstap_env(), cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def server_dry_run(objects: list[dict[str, object]]) -> subprocess.CompletedProcess[str]:
    return kubectl("apply", "--dry-run=server", "-f", "-", check=False,
                   stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))


def test_worker_objects_pass_validation_and_admission(apps: object) -> None:
    objects = manifests("-n", "kstap-e2e-shop", "--worker-namespace", "kstap-e2e-dry")
    kubectl("apply", "-f", "-", stdin=json.dumps(objects[0]))  # a dry run cannot create into a dry-run namespace
    try:
        res = server_dry_run(objects[1:])
        assert res.returncode == 0, res.stderr
        assert res.stdout.count("(server dry run)") == 3, res.stdout
    finally:
        kubectl("delete", "namespace", "kstap-e2e-dry", "--wait=false", check=False)
    ds = next(o for o in objects if o["kind"] == "DaemonSet")
    terms = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][  # type: ignore[index]
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == len(NODES)


def test_one_term_for_all_nodes_is_refused_with_422(apps: object) -> None:
    """What kstap's DaemonSet looked like before: one term naming every node. The real server says no."""
    objects = manifests("-n", "kstap-e2e-shop", "--worker-namespace", "default")
    ds = copy.deepcopy(next(o for o in objects if o["kind"] == "DaemonSet"))
    ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][  # type: ignore[index]
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] = [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": NODES}]}]
    res = server_dry_run([ds])
    assert res.returncode != 0
    assert "must be only one value when `operator` is 'In' or 'NotIn' for node field selector" in res.stderr, res.stderr


def test_pod_security_baseline_refuses_the_worker(apps: object) -> None:
    """Why the worker namespace is `privileged`: under `baseline` the API server refuses the worker pod."""
    objects = manifests("-n", "kstap-e2e-shop", "--worker-namespace", "kstap-e2e-psa")
    for o in objects:
        if o["kind"] == "Namespace":
            o["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = "baseline"  # type: ignore[index]
    kubectl("apply", "-f", "-", stdin=json.dumps(next(o for o in objects if o["kind"] == "Namespace")))
    try:
        ds = next(o for o in objects if o["kind"] == "DaemonSet")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "psa-probe", "namespace": "kstap-e2e-psa"},
               "spec": copy.deepcopy(ds["spec"]["template"]["spec"])}  # type: ignore[index]
        pod["spec"].pop("serviceAccountName")  # type: ignore[attr-defined]  (its account is not made here)
        res = kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False)
        assert res.returncode != 0 and "violates PodSecurity" in res.stderr, res.stderr
        assert "hostNetwork" in res.stderr and "NET_RAW" in res.stderr
    finally:
        kubectl("delete", "namespace", "kstap-e2e-psa", "--wait=false", check=False)
