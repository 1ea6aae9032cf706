"""Least privilege on the real API server: a user holding exactly docs/kubernetes.md's RBAC table runs
`kstap tap -n NS` and `kstap clean`; the same user without one row stops with exit 3 and the forbidden hint.

The user is a ServiceAccount of its own namespace, its token from the real TokenRequest API (`kubectl create
token`), its kubeconfig that token alone: what a cluster admin hands an SRE. The kube-apiserver's own RBAC
authorizer judges every request (tests/kube/test_rbac.py proves the same table against the fake, call by call,
and each row needed one by one).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e import APP_NS, KUBECONFIG, ROOT, Apps, apply, http_requests, kstap_env, kubectl, tap
from rbac_table import Grant, documented

USER_NS = "kstap-e2e-rbac"
USER = "sre"
WORKER_NS = "kstap"
SUBJECT = {"kind": "ServiceAccount", "name": USER, "namespace": USER_NS}


def roles(grants: set[Grant], tag: str) -> list[dict[str, Any]]:
    """The table's rows as a ClusterRole (``cluster``), a Role in the worker namespace and one in the target
    namespace, each bound to the user."""
    where_ns = {"cluster": None, "worker namespace": WORKER_NS, "target namespaces": APP_NS}
    objects: list[dict[str, Any]] = []
    for where, ns in where_ns.items():
        rules = [{"apiGroups": [group], "resources": [resource], "verbs": [verb]}
                 for verb, group, resource, w in sorted(grants) if w == where]
        name = f"kstap-e2e-{tag}"
        meta: dict[str, Any] = {"name": name, **({"namespace": ns} if ns else {})}
        kind = "Role" if ns else "ClusterRole"
        objects += [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta, "rules": rules},
                    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": f"{kind}Binding", "metadata": meta,
                     "subjects": [SUBJECT],
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}}]
    return objects


def remove(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        ns = obj["metadata"].get("namespace")
        kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], *(["-n", ns] if ns else []),
                "--ignore-not-found", "--wait=false", check=False)


@pytest.fixture(scope="module")
def user_kubeconfig(apps: Apps, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kubeconfig with the ServiceAccount's token only (no client certificate, no admin)."""
    apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": USER_NS}},
           {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": USER, "namespace": USER_NS}},
           # the admin made kstap's namespace (a RoleBinding needs one to live in): kstap gets and updates it
           {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": WORKER_NS}}])
    token = kubectl("create", "token", USER, "-n", USER_NS, "--duration=3600s").stdout.strip()
    admin = json.loads(Path(KUBECONFIG).read_text())
    cfg = {**admin, "users": [{"name": USER, "user": {"token": token}}],
           "contexts": [{"name": "kstap-e2e", "context": {"cluster": admin["clusters"][0]["name"], "user": USER,
                                                         "namespace": "default"}}]}
    path = tmp_path_factory.mktemp("rbac") / "sre.kubeconfig"
    path.write_text(json.dumps(cfg))
    path.chmod(0o600)
    yield str(path)
    # kstap leaves a namespace it did not create (`kstap clean` deletes only its own): the admin removes it,
    # and waits, so the next test's run creates kstap's own again
    kubectl("delete", "namespace", USER_NS, WORKER_NS, "--ignore-not-found", "--timeout=150s", check=False,
            timeout=180)


def can_i(kubeconfig: str, verb: str, resource: str, ns: str | None) -> bool:
    res = kubectl("auth", "can-i", verb, resource, *(["-n", ns] if ns else []), check=False, kubeconfig=kubeconfig)
    return res.stdout.strip() == "yes"


def test_the_documented_table_is_enough_on_the_real_server(apps: Apps, user_kubeconfig: str, tmp_path: Path) -> None:
    always, optional, _ = documented()
    granted = roles(always | optional, "sre")
    apply(granted)
    try:
        # the real authorizer: the user holds what the table says, and nothing of an admin
        assert can_i(user_kubeconfig, "create", "daemonsets.apps", WORKER_NS)
        assert can_i(user_kubeconfig, "list", "pods", APP_NS)
        assert not can_i(user_kubeconfig, "create", "daemonsets.apps", APP_NS)
        assert not can_i(user_kubeconfig, "create", "clusterroles.rbac.authorization.k8s.io", None)
        assert not can_i(user_kubeconfig, "list", "pods", "kube-system")
        tag = secrets.token_hex(3)
        paths = [f"{tag}-r{i}" for i in range(4)]
        run = tap(["-n", APP_NS], during=lambda: http_requests("client-1", apps.ip("http-2"), paths), duration=20,
                  tmp=tmp_path / "run", kubeconfig=user_kubeconfig)
        assert run.code == 0, run.err
        assert "forbidden" not in run.err.lower(), run.err
        got = sorted(p for e in run.entry_list() if (p := (e.get("path") or "").lstrip("/")).startswith(tag))
        assert got == paths, (got, run.err)
        clean = subprocess.run([sys.executable, "-m", "kstap", "clean"], capture_output=True, text=True,
                               env=kstap_env(user_kubeconfig), cwd=ROOT, timeout=180)
        assert clean.returncode == 0, clean.stderr
        assert not json.loads(kubectl("get", "daemonsets", "-n", WORKER_NS, "-o", "json").stdout)["items"]
    finally:
        remove(granted)


def test_a_missing_row_stops_with_exit_3_and_names_it(apps: Apps, user_kubeconfig: str, tmp_path: Path) -> None:
    always, optional, _ = documented()
    missing: Grant = ("create", "apps", "daemonsets", "worker namespace")
    assert missing in always
    granted = roles((always | optional) - {missing}, "sre-short")
    apply(granted)
    try:
        run = tap(["-n", APP_NS], duration=10, tmp=tmp_path / "run", kubeconfig=user_kubeconfig, timeout=120)
        assert run.code == 3, (run.code, run.err)
        lines = run.err.strip().splitlines()
        assert "Traceback" not in run.err, run.err
        error = next(line for line in lines if line.startswith("kstap: error:"))
        assert "'create' on daemonsets" in error and f"'{WORKER_NS}'" in error, error
        assert any(line.startswith("hint:") and "kubectl auth can-i create daemonsets" in line for line in lines), lines
        assert not json.loads(kubectl("get", "daemonsets", "-n", WORKER_NS, "-o", "json").stdout)["items"]
    finally:
        remove(granted)
