"""Faults, end to end through the CLI: each is two lines on stderr and a documented exit code.

no kubeconfig → 3, unreachable API server → 3, 401 → 3, RBAC 403 naming the verb → 3,
unknown namespace / context / kubeconfig path → 2, conflicting flags → 2.
(Image pull failures and workers not Ready in time, exit 4: test_deploy.py; a lost watch: test_watch.py.)
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kstap.errors import ExitCode, UsageError
from kstap.kube import client
from kstap.kube.client import KubeSettings, connect


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def test_no_kubeconfig_is_exit_3_with_a_hint(cli, two_line_error) -> None:
    r = cli("manifests", "-n", "a")
    assert r.code == ExitCode.ENVIRONMENT
    two_line_error(r.err, "no kubeconfig found and not running inside a cluster")
    assert "pass --kubeconfig FILE or set KUBECONFIG" in r.err and "/.kube/config" in r.err


def test_kubeconfig_env_is_used(cli, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", f"/nonexistent/a:{kubeconfig}")
    r = cli("clean")
    assert r.code == 0 and "nothing to clean" in r.err


def test_missing_kubeconfig_path_is_a_usage_error(cli, tmp_path: Path, two_line_error) -> None:
    r = cli("clean", "--kubeconfig", str(tmp_path / "nope.yaml"))
    assert r.code == ExitCode.USAGE
    two_line_error(r.err, f"--kubeconfig {tmp_path / 'nope.yaml'}: no such file")


def test_unreachable_api_server_is_exit_3(cli, apiserver, tmp_path: Path, two_line_error) -> None:
    port = free_port()
    cfg = apiserver.write_kubeconfig(tmp_path / "dead", server=f"http://127.0.0.1:{port}")
    r = cli("manifests", "-n", "a", "--kubeconfig", str(cfg))
    assert r.code == ExitCode.ENVIRONMENT
    two_line_error(r.err, f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}: connection refused")
    assert "kubectl cluster-info" in r.err


def test_unknown_namespace_is_exit_2(cli, kubeconfig: Path, two_line_error) -> None:
    r = cli("manifests", "-n", "a", "-n", "nope", "--kubeconfig", str(kubeconfig))
    assert r.code == ExitCode.USAGE
    two_line_error(r.err, "namespace 'nope' not found")
    assert "kubectl get namespaces" in r.err


def test_unknown_context_is_exit_2_listing_the_contexts(cli, kubeconfig: Path, two_line_error) -> None:
    r = cli("clean", "--kubeconfig", str(kubeconfig), "--context", "prod")
    assert r.code == ExitCode.USAGE
    two_line_error(r.err, f"no context 'prod' in {kubeconfig}")
    assert "contexts: fake, other" in r.err


def test_rbac_403_names_the_missing_verb(cli, cluster, kubeconfig: Path, two_line_error) -> None:
    cluster.forbid("list", "pods", "b")
    r = cli("manifests", "-n", "a", "-n", "b", "--kubeconfig", str(kubeconfig))
    assert r.code == ExitCode.ENVIRONMENT
    two_line_error(r.err, "forbidden: RBAC does not allow 'list' on pods in namespace 'b'")
    assert 'User "kstap-test" cannot list resource "pods"' in r.err
    assert "hint: ask a cluster admin for 'list' on 'pods'; check with: kubectl auth can-i list pods -n b" in r.err


def test_rbac_403_on_clean(cli, cluster, kubeconfig: Path) -> None:
    cluster.forbid("delete", "secrets")
    cluster.forbid("list", "daemonsets")
    r = cli("clean", "--kubeconfig", str(kubeconfig))
    assert r.code == ExitCode.ENVIRONMENT and "'list' on daemonsets cluster-wide" in r.err


def test_bad_credentials_are_exit_3(cli, apiserver, tmp_path: Path, two_line_error) -> None:
    cfg = apiserver.write_kubeconfig(tmp_path / "kc", token="expired")
    r = cli("clean", "--kubeconfig", str(cfg))
    assert r.code == ExitCode.ENVIRONMENT
    two_line_error(r.err, f"the API server at {apiserver.url} rejected the credentials (401 Unauthorized)")


@pytest.mark.parametrize("argv, message", [
    (["-n", "a", "-A"], "-n and -A cannot be used together"),
    (["-e", "kube-system"], "-e/--exclude-namespace only applies with -A"),
    (["-A", "web-("], "bad pod regex 'web-('"),
    (["-n", "a", "--node", "n1"], "--node names the nodes directly"),
    (["-A", "--mode", "sometimes"], "unknown --mode 'sometimes'"),
    (["-A", "--memory-budget", "lots"], "bad size 'lots'"),
])
def test_conflicts_are_exit_2(cli, kubeconfig: Path, two_line_error, argv: list[str], message: str) -> None:
    r = cli("manifests", *argv, "--kubeconfig", str(kubeconfig))
    assert r.code == ExitCode.USAGE, r.err
    two_line_error(r.err, message)


def test_no_pods_to_capture_is_exit_2(cli, kubeconfig: Path) -> None:
    r = cli("manifests", "-A", "^nothing-matches$", "--kubeconfig", str(kubeconfig))
    assert r.code == ExitCode.USAGE and "no pod to capture in all namespaces" in r.err


def test_in_cluster_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("in-cluster-token")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (sa / "namespace").write_text("monitoring\n")
    monkeypatch.setattr(client, "SERVICE_ACCOUNT_DIR", sa)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443", "HOME": str(tmp_path)}
    kube = connect(KubeSettings(), environ=env)
    assert kube.context == "in-cluster" and kube.namespace == "monitoring"
    assert kube.server == "https://10.96.0.1:443"
    assert kube.api_client.configuration.api_key["BearerToken"].lower() == "bearer in-cluster-token"
    with pytest.raises(UsageError, match="--context needs a kubeconfig"):
        connect(KubeSettings(context="prod"), environ=env)


def test_kubeconfig_wins_over_in_cluster(monkeypatch: pytest.MonkeyPatch, kubeconfig: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBECONFIG": str(kubeconfig)}
    assert connect(KubeSettings(), environ=env).context == "fake"


@pytest.mark.parametrize("status, op, kind, code", [
    (401, client.Op("list", "pods", "a"), "EnvironmentProblem", ExitCode.ENVIRONMENT),
    (403, client.Op("watch", "pods"), "Forbidden", ExitCode.ENVIRONMENT),
    (404, client.Op("get", "namespaces", None, "x"), "UsageError", ExitCode.USAGE),
    (404, client.Op("delete", "namespaces", None, "x"), "NotFound", ExitCode.RUNTIME),  # already gone: clean goes on
    (404, client.Op("get", "daemonsets", "kstap", "w"), "NotFound", ExitCode.RUNTIME),
    (409, client.Op("create", "secrets", "kstap"), "Conflict", ExitCode.RUNTIME),
    (410, client.Op("watch", "pods", "a"), "Expired", ExitCode.RUNTIME),
    (503, client.Op("list", "pods", "a"), "ApiUnreachable", ExitCode.ENVIRONMENT),
    (422, client.Op("create", "daemonsets", "kstap"), "KstapError", ExitCode.RUNTIME),
])
def test_api_errors_are_mapped_by_status(status: int, op, kind: str, code: ExitCode) -> None:
    import json

    from kubernetes.client.exceptions import ApiException

    exc = ApiException(status=status, reason="x")
    exc.body = json.dumps({"kind": "Status", "code": status, "message": "the server's words"})
    err = client.api_error(exc, op, "https://api.example:6443", "prod")
    assert type(err).__name__ == kind and err.code == code
    assert "the server's words" in err.message or status in (401, 404)
