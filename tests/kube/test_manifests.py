"""``kstap manifests``: valid against the real Kubernetes schemas (kubernetes-validate --strict), the
security settings of DESIGN.md, least-privilege RBAC that matches what the code calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from kstap.kube import manifests as mf

K8S_VERSION = "1.37.0"
"""The newest schema kubernetes-validate ships (no network needed: the schemas are in the wheel)."""

VALIDATOR = Path(sys.executable).parent / "kubernetes-validate"


def spec(**kw) -> mf.WorkerSpec:
    base = {"run_id": "r1", "token": "t" * 64, "nodes": ["node-b", "node-a"], "seed": 7}
    return mf.WorkerSpec(**{**base, **kw})


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def the(objects: list[dict], kind: str) -> dict:
    [obj] = [o for o in objects if o["kind"] == kind]
    return obj


def validate_cli(path: Path) -> subprocess.CompletedProcess[str]:
    assert VALIDATOR.exists(), "kubernetes-validate is a dev dependency (pip install -e '.[dev]')"
    return subprocess.run([str(VALIDATOR), "--strict", "-k", K8S_VERSION, str(path)], capture_output=True,
                          text=True, timeout=60, check=False)


# -- schema validation -------------------------------------------------------------------------------
def test_manifests_from_the_cluster_validate_strictly(cli, kubeconfig, tmp_path: Path) -> None:
    r = cli("manifests", "-n", "a", "-n", "b", "--kubeconfig", str(kubeconfig), "-f", "tcp",
            "--worker-image", "registry.example/kstap:0.1.0", "--memory-budget", "256Mi", "--cpu-budget", "0.5",
            "--mode", "percentage", "--rate", "10%", "--seed", "42", "--run-id", "demo1")
    assert r.code == 0, r.err
    out = tmp_path / "kstap.yaml"
    out.write_text(r.out)
    v = validate_cli(out)
    assert v.returncode == 0, v.stdout + v.stderr
    objects = docs(r.out)
    assert [o["kind"] for o in objects] == ["Namespace", "ServiceAccount", "Secret", "DaemonSet"]
    assert v.stdout.count("passed for resource") == 4
    ds = the(objects, "DaemonSet")
    terms = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    # one term per node: a real API server takes a single value per node field selector (422 otherwise)
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [n]}]}
                     for n in ("node-a", "node-b", "node-c")]
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--bpf-filter") + 1] == (
        "(tcp) and (ip host 10.244.1.10 or ip host 10.244.1.20 or ip host 10.244.2.10 or ip host 10.244.2.11 "
        "or ip host 10.244.3.20 or ip6 host fd00:3::20)")
    assert args[args.index("--seed-file") + 1] == mf.SEED_FILE and args[args.index("--rate") + 1] == "0.1"
    assert "--seed" not in args and "42" not in str(ds), "the seed is in the Secret, never in the pod spec"
    import base64

    assert base64.b64decode(the(objects, "Secret")["data"]["seed"]) == b"42"
    assert args[args.index("--mode") + 1] == "percentage"
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/kstap:0.1.0"


@pytest.mark.parametrize("promiscuous", [False, True])
def test_every_object_validates_with_the_python_api(promiscuous: bool) -> None:
    for obj in mf.all_objects(spec(promiscuous=promiscuous, rate=0.5, mode="auto", entries=True)):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_validator_does_reject_a_bad_manifest(tmp_path: Path) -> None:
    ds = mf.daemonset(spec())
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["priviledged"] = False  # a typo
    bad = tmp_path / "bad.yaml"
    bad.write_text(mf.to_yaml([ds]))
    v = validate_cli(bad)
    assert v.returncode != 0 and "priviledged" in v.stdout + v.stderr


def test_manifests_offline_with_node_names(cli, tmp_path: Path) -> None:
    r = cli("manifests", "--node", "n1", "--node", "n2", "--run-id", "x1")
    assert r.code == 0, r.err
    assert "--node: the pod IPs are not known" in r.err
    (tmp_path / "m.yaml").write_text(r.out)
    assert validate_cli(tmp_path / "m.yaml").returncode == 0
    assert r.out.startswith("# kstap ") and "treat this output as a secret" in r.out


# -- security settings -------------------------------------------------------------------------------
def test_security_context_is_least_privilege() -> None:
    pod = mf.daemonset(spec())["spec"]["template"]["spec"]
    [c] = pod["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65534
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["hostNetwork"] is True
    assert not pod.get("hostPID") and not pod.get("hostIPC")
    assert all("hostPath" not in v for v in pod["volumes"])
    promisc = mf.daemonset(spec(promiscuous=True))["spec"]["template"]["spec"]["containers"][0]
    psc = promisc["securityContext"]
    assert psc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]}
    # NET_ADMIN cannot come from a file capability: --promiscuous runs as root, still not privileged
    assert psc["runAsUser"] == 0 and psc["runAsNonRoot"] is False
    assert psc["privileged"] is False and psc["allowPrivilegeEscalation"] is False


def test_bpf_is_added_only_when_auto_mode_loads_the_kernel_flow_table() -> None:
    def caps(**kw: object) -> tuple[list[str], int]:
        sc = mf.daemonset(spec(**kw))["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        return sc["capabilities"]["add"], sc["runAsUser"]

    assert caps(mode="full") == (["NET_RAW"], 65534)
    assert caps(mode="percentage") == (["NET_RAW"], 65534)
    assert caps(mode="auto") == (["NET_RAW", "BPF"], 0)  # no file capability carries BPF: UID 0
    assert caps(mode="auto", kernel_flow_table=False) == (["NET_RAW"], 65534)
    assert caps(mode="auto", flow_table="user") == (["NET_RAW"], 65534)


def test_the_flow_table_setting_reaches_auto_mode_workers() -> None:
    def flag(**kw: object) -> str | None:
        args = mf.worker_args(spec(**kw))
        return args[args.index("--flow-table") + 1] if "--flow-table" in args else None

    assert flag(mode="full") is None and flag(mode="percentage", rate=0.5) is None
    assert flag(mode="auto") == "auto"
    assert flag(mode="auto", flow_table="kernel") == "kernel"  # a node without BPF maps is then an error
    assert flag(mode="auto", flow_table="user") == "user"
    assert flag(mode="auto", kernel_flow_table=False) == "user"  # no BPF capability: never try the kernel


def test_resources_tolerations_and_token() -> None:
    s = spec(memory_budget=768 << 20, cpu_budget=0.25)
    pod = mf.daemonset(s)["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"] == "768Mi"
    assert c["resources"]["limits"]["cpu"] == c["resources"]["requests"]["cpu"] == "250m"
    assert pod["tolerations"] == [{"operator": "Exists"}]  # every taint, every effect
    args = c["args"]
    assert args[:2] == ["worker", "--listen"] and args[args.index("--token-file") + 1] == mf.TOKEN_FILE
    assert args[args.index("--memory-budget") + 1] == str(768 << 20)
    assert s.token not in " ".join(args) and s.token not in str(c["env"])  # only in the Secret
    mount = next(m for m in c["volumeMounts"] if m["name"] == "token")
    assert mount == {"name": "token", "mountPath": "/var/run/kstap", "readOnly": True}
    vol = next(v for v in pod["volumes"] if v["name"] == "token")
    assert vol["secret"]["secretName"] == s.secret_name
    import base64

    assert base64.b64decode(mf.secret(s)["data"]["token"]).decode() == s.token
    # the seed: the same Secret, the same mount; not on the command line, not in the environment
    assert args[args.index("--seed-file") + 1] == mf.SEED_FILE == f"{mount['mountPath']}/seed"
    assert base64.b64decode(mf.secret(s)["data"]["seed"]).decode() == "7"
    assert "--seed" not in args and "7" not in [*args, *(str(e.get("value")) for e in c["env"])]
    assert "seed" not in mf.secret(spec(seed=None))["data"]


def test_worker_flags_exist_in_kstap_worker() -> None:
    """Every flag the DaemonSet passes is one ``kstap worker`` accepts."""
    import typer

    from kstap.cli.worker_cmd import worker

    cmd = typer.main.get_command(_app(worker))
    known = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
    args = mf.worker_args(spec(rate=0.25, promiscuous=True, entries=True))
    flags = [a for a in args[2:] if a.startswith("-")]
    assert flags and set(flags) <= known, set(flags) - known


def _app(fn):
    import typer

    app = typer.Typer(add_completion=False)
    app.command()(fn)
    return app


def test_every_object_is_labelled() -> None:
    s = spec(run_id="abc123")
    for obj in mf.all_objects(s):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "kstap" and labels["kstap.io/run"] == "abc123", obj["kind"]
    pod_labels = mf.daemonset(s)["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["kstap.io/run"] == "abc123" and pod_labels["app.kubernetes.io/managed-by"] == "kstap"


BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
"""Pod Security Standards, baseline, "Capabilities": the only ones a pod may add."""


def baseline_violations(pod: dict) -> list[str]:
    """The two baseline controls a capture pod can run into (Host Namespaces, Capabilities)."""
    out = [f"spec.{k}" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    for c in pod["containers"]:
        extra = set(c.get("securityContext", {}).get("capabilities", {}).get("add", [])) - BASELINE_CAPABILITIES
        out += [f"capabilities.add {cap}" for cap in sorted(extra)]
    return out


def test_pod_security_level_is_the_only_one_that_admits_the_worker() -> None:
    ns = mf.namespace(spec())
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    # Why not baseline: the worker pod breaks exactly these baseline controls, both essential to capture.
    pod = mf.daemonset(spec())["spec"]["template"]["spec"]
    assert baseline_violations(pod) == ["spec.hostNetwork", "capabilities.add NET_RAW"]


# -- RBAC ----------------------------------------------------------------------------------------------
def test_the_workers_get_no_role_and_no_api_credential() -> None:
    """The worker makes no API call (tests/kube/test_rbac.py proves it), so least privilege is none:
    no Role/ClusterRole/binding among the objects, and the ServiceAccount's token is never mounted."""
    s = spec()
    assert mf.RBAC_RULES == []
    kinds = [o["kind"] for o in mf.all_objects(s)]
    assert not {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"} & set(kinds)
    assert mf.service_account(s)["automountServiceAccountToken"] is False
    pod = mf.daemonset(s)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == s.name and pod["automountServiceAccountToken"] is False
    mounts = [m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]]
    assert not any(m.startswith("/var/run/secrets/kubernetes.io") for m in mounts)
