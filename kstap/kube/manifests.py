"""The objects kstap deploys, as plain dicts: pure functions of a :class:`WorkerSpec`.

Security posture (docs/kubernetes.md, "Security posture"):

- **Pod Security level ``privileged`` on kstap's own namespace.** The worker needs ``hostNetwork``
  (to see every pod's veth on the node) and ``NET_RAW`` (packet sockets). The Pod Security
  Standards' *baseline* level forbids both: its "Host Namespaces" control requires
  ``hostNetwork`` unset/false, and its "Capabilities" control allows adding only AUDIT_WRITE, CHOWN,
  DAC_OVERRIDE, FOWNER, FSETID, KILL, MKNOD, NET_BIND_SERVICE, SETFCAP, SETGID, SETPCAP, SETUID and
  SYS_CHROOT — not NET_RAW (pod-security-admission's ``check_capabilities_baseline.go``). *restricted*
  is stricter still. So ``baseline`` would make the API server reject every worker pod; the only
  level that admits them is ``privileged``. It is confined to a namespace that holds nothing but
  kstap's DaemonSet, and the pod itself stays far from privileged: not ``privileged``, no privilege
  escalation, every capability dropped but NET_RAW, read-only root filesystem, non-root user,
  RuntimeDefault seccomp, no hostPath, no hostPID/hostIPC.
- **Non-root with only NET_RAW.** Capabilities added to a non-root container land in its bounding
  and permitted sets but are lost at ``execve`` (no ambient capabilities in Kubernetes), so the image
  gives the Python binary the file capability ``cap_net_raw+ep`` (Dockerfile). With
  ``allowPrivilegeEscalation: false`` (no_new_privs) the kernel still honours a file capability that
  is already in the process's permitted set, which ``capabilities.add`` ensures: the worker runs as
  UID 65534 with NET_RAW and nothing else. ``--promiscuous`` is the exception: NET_ADMIN cannot ride on
  a file capability (the image's binary would then fail to exec wherever NET_ADMIN is not granted),
  so with it the worker runs as UID 0 — still with only NET_RAW and NET_ADMIN, not privileged.
- **No RBAC for the workers, no API credential in their pods.** ``kstap worker`` never calls the
  Kubernetes API: the CLI resolves targets, deploys and reaches the workers (through the pod proxy)
  with its user's own credentials. So the workers' ServiceAccount is bound to no role
  (:data:`RBAC_RULES` is empty) and its token is not mounted (``automountServiceAccountToken:
  false``): a compromised worker holds no cluster credential at all. ``tests/kube/test_rbac.py``
  proves it (a worker runs with an API server that refuses everything and is never called).
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from kstap import __version__

Obj = dict[str, Any]

MANAGED_BY = {"app.kubernetes.io/managed-by": "kstap"}
RUN_LABEL = "kstap.io/run"
NAME_LABEL = "app.kubernetes.io/name"
WORKER_NAME = "kstap-worker"
DEFAULT_IMAGE = f"kstap:{__version__}"
"""The image the Dockerfile builds; push it where the cluster can pull it and pass --worker-image."""
DEFAULT_NAMESPACE = "kstap"
DEFAULT_PORT = 8900
TOKEN_DIR = "/var/run/kstap"
TOKEN_FILE = f"{TOKEN_DIR}/token"
SEED_FILE = f"{TOKEN_DIR}/seed"
"""The run's flow-hash seed, a key of the same Secret: never in the pod spec (whoever reads the
DaemonSet could otherwise tell which flows the run samples, docs/security.md)."""
WORKER_UID = 65534
"""nobody: the Dockerfile's USER."""

RBAC_RULES: list[Obj] = []
"""What the workers' ServiceAccount may do: nothing. The worker makes no API call (target resolution,
deployment and the watch run in the CLI, with the user's credentials), so kstap creates no Role or
ClusterRole for it (versions before 0.2 created a ClusterRole reading pods and nodes that nothing used)."""

_RUN_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")


def new_run_id() -> str:
    """A fresh run id: 8 hex digits, valid in names and label values."""
    return secrets.token_hex(4)


def new_token() -> str:
    """A fresh worker API token (256 bits)."""
    return secrets.token_hex(32)


def check_run_id(run_id: str) -> str:
    from kstap.errors import UsageError

    if not _RUN_ID.match(run_id):
        raise UsageError(f"bad run id {run_id!r}", hint="lower-case letters, digits and '-', at most 32")
    return run_id


@dataclass
class WorkerSpec:
    """Everything the manifests depend on. Budgets are per worker pod, i.e. per node."""

    run_id: str
    """Names and labels every object of the run (``kstap.io/run``); see :func:`new_run_id`."""
    token: str
    """The worker API token, stored in a Secret and mounted read-only; see :func:`new_token`."""
    nodes: list[str]
    """Nodes that host targets: the DaemonSet's node affinity allows exactly these."""
    image: str = DEFAULT_IMAGE
    """--worker-image."""
    namespace: str = DEFAULT_NAMESPACE
    """Where the namespaced objects go; kstap creates it (labelled) if it is missing."""
    port: int = DEFAULT_PORT
    """The worker API port on the node's address (hostNetwork: it is a port of the node)."""
    interfaces: list[str] = field(default_factory=lambda: ["any"])
    """-i for the worker: ``any`` sees every pod's veth and the uplink of the node."""
    bpf_filter: str = ""
    """The filter workers start with (the CLI then posts each node's own filter to /v1/control)."""
    mode: str = "full"
    rate: float | None = None
    seed: int | None = None
    """The flow-hash seed, the same on every node so a cross-node flow is kept at both ends or neither.
    It travels in the run's Secret (:data:`SEED_FILE`), not in the pod spec; None: each worker draws
    its own (only sensible in ``full`` mode, where nothing is sampled)."""
    memory_budget: int = 512 << 20
    """Bytes; the pod's memory request and limit (equal: the budget is a hard line, and Guaranteed QoS
    keeps the worker from being the first to go under node memory pressure). 512 MiB holds the default
    32 MiB ring per interface, the flow table and the stream backlog with room to spare."""
    cpu_budget: float = 1.0
    """Cores; the pod's CPU request and limit (one core sustains ~1 Mpps of capture + sampling)."""
    promiscuous: bool = False
    """Adds NET_ADMIN for promiscuous mode, and runs the worker as UID 0 (see the module docstring)."""
    entries: bool = False
    """Run dissection on the workers (``--entries on``)."""
    kernel_flow_table: bool = True
    """Auto mode decides flows in the kernel (an eBPF socket filter with BPF maps): adds BPF to the
    worker's capabilities in auto mode, which, like NET_ADMIN, no file capability can carry, so the
    worker then runs as UID 0 (still only NET_RAW and BPF). False keeps auto mode on the classic
    filter's fallback, non-root with NET_RAW only."""
    flow_table: str = "auto"
    """The user's sampling.flow_table, passed on as ``kstap worker --flow-table`` in auto mode:
    ``kernel`` makes a node without BPF maps an error, ``user`` drops BPF as ``kernel_flow_table=False``."""
    extra_labels: dict[str, str] = field(default_factory=dict)

    def labels(self) -> dict[str, str]:
        return {**MANAGED_BY, RUN_LABEL: self.run_id, **self.extra_labels}

    @property
    def uses_bpf(self) -> bool:
        """True when the workers load the in-kernel flow table (auto mode, not turned off)."""
        return self.mode == "auto" and self.kernel_flow_table and self.flow_table != "user"

    @property
    def name(self) -> str:
        return f"{WORKER_NAME}-{self.run_id}"

    @property
    def secret_name(self) -> str:
        return f"kstap-token-{self.run_id}"

    def selector(self) -> dict[str, str]:
        """The DaemonSet's pod selector (and the label selector that finds its pods)."""
        return {NAME_LABEL: WORKER_NAME, RUN_LABEL: self.run_id}


def _meta(spec: WorkerSpec, name: str, namespaced: bool = True) -> Obj:
    meta: Obj = {"name": name, "labels": spec.labels()}
    if namespaced:
        meta["namespace"] = spec.namespace
    return meta


def namespace(spec: WorkerSpec) -> Obj:
    """kstap's namespace, Pod Security level ``privileged`` (see the module docstring for why)."""
    meta = _meta(spec, spec.namespace, namespaced=False)
    meta["labels"].update({
        "pod-security.kubernetes.io/enforce": "privileged",
        "pod-security.kubernetes.io/enforce-version": "latest",
    })
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def service_account(spec: WorkerSpec) -> Obj:
    """The workers' identity: bound to no role, its token never mounted (:data:`RBAC_RULES`)."""
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(spec, spec.name),
            "automountServiceAccountToken": False}


def secret(spec: WorkerSpec) -> Obj:
    """The run's API token and flow-hash seed; the only place either is written down in the cluster."""
    data = {"token": base64.b64encode(spec.token.encode()).decode()}
    if spec.seed is not None:
        data["seed"] = base64.b64encode(str(spec.seed).encode()).decode()
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(spec, spec.secret_name), "type": "Opaque",
            "data": data}


def quantity_bytes(n: int) -> str:
    for suffix, unit in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def quantity_cpu(cores: float) -> str:
    return f"{max(1, round(cores * 1000))}m"


def worker_args(spec: WorkerSpec) -> list[str]:
    """The worker's command line (flags of ``kstap worker``, kstap/cli/worker_cmd.py)."""
    args = ["kstap", "worker", "--listen", f"$(POD_IP):{spec.port}", "--token-file", TOKEN_FILE,
            "--node", "$(NODE_NAME)"]
    for iface in spec.interfaces:
        args += ["-i", iface]
    args += ["--bpf-filter", spec.bpf_filter, "--mode", spec.mode]
    if spec.rate is not None:
        args += ["--rate", repr(spec.rate)]
    if spec.mode == "auto":  # without BPF the worker must not try the kernel table
        args += ["--flow-table", spec.flow_table if spec.uses_bpf else "user"]
    if spec.seed is not None:
        args += ["--seed-file", SEED_FILE]  # the Secret's "seed" key, mounted next to the token
    args += ["--memory-budget", str(spec.memory_budget), "--cpu-budget", repr(spec.cpu_budget),
             "--entries", "on" if spec.entries else "off"]
    return args


def _user(spec: WorkerSpec) -> Obj:
    """Non-root (NET_RAW from the image's file capability); root only for --promiscuous, whose
    NET_ADMIN no file capability carries (a file capability the bounding set lacks makes exec fail)."""
    if spec.promiscuous or spec.uses_bpf:
        return {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0}
    return {"runAsNonRoot": True, "runAsUser": WORKER_UID, "runAsGroup": WORKER_UID}


def security_context(spec: WorkerSpec) -> Obj:
    caps = ["NET_RAW", "NET_ADMIN"] if spec.promiscuous else ["NET_RAW"]
    if spec.uses_bpf:
        caps.append("BPF")  # the in-kernel flow table's maps and socket filter (docs/security.md)
    return {"privileged": False, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            **_user(spec), "capabilities": {"drop": ["ALL"], "add": caps},
            "seccompProfile": {"type": "RuntimeDefault"}}


def node_terms(nodes: list[str]) -> list[Obj]:
    """Node selector terms that allow exactly ``nodes``: one term per node, ORed.

    Not one ``matchFields metadata.name In [a, b, …]``: kube-apiserver allows a single value in a node
    *field* selector and refuses anything else with 422 ("must be only one value when `operator` is 'In'
    or 'NotIn' for node field selector"), so a run with targets on two nodes could not deploy. The
    DaemonSet controller pins each of its pods the same way (one term, one name).
    """
    return [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [n]}]} for n in sorted(nodes)]


def daemonset(spec: WorkerSpec) -> Obj:
    """One worker per target node: node affinity on the node names (:func:`node_terms`), hostNetwork,
    least privilege.

    ``updateStrategy: OnDelete``: when churn brings targets to a new node, replacing the DaemonSet's
    node list starts a worker there without restarting (and interrupting) the running ones.
    """
    env = [
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOME", "value": "/tmp"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]
    resources = {"memory": quantity_bytes(spec.memory_budget), "cpu": quantity_cpu(spec.cpu_budget)}
    container: Obj = {
        "name": "worker",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "args": worker_args(spec)[1:],
        "command": ["kstap"],
        "env": env,
        "ports": [{"name": "api", "containerPort": spec.port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": spec.port}, "periodSeconds": 2,
                           "failureThreshold": 3, "timeoutSeconds": 2},
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": security_context(spec),
        "volumeMounts": [{"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_labels = {**spec.labels(), **spec.selector()}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": node_terms(spec.nodes)}}}
    pod_spec: Obj = {
        "serviceAccountName": spec.name,
        "automountServiceAccountToken": False,
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "affinity": affinity,
        "tolerations": [{"operator": "Exists"}],
        "securityContext": {**_user(spec), "fsGroup": WORKER_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": [{"name": "token", "secret": {"secretName": spec.secret_name, "defaultMode": 0o440}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
    }
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": _meta(spec, spec.name),
            "spec": {"selector": {"matchLabels": spec.selector()},
                     "updateStrategy": {"type": "OnDelete"},
                     "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec}}}


def all_objects(spec: WorkerSpec) -> list[Obj]:
    """Every object of a run, in the order they must be created."""
    return [namespace(spec), service_account(spec), secret(spec), daemonset(spec)]


def to_yaml(objects: list[Obj], header: str = "") -> str:
    """Multi-document YAML, as ``kubectl apply -f -`` reads it."""
    import yaml

    docs = [yaml.safe_dump(o, sort_keys=False, default_flow_style=False) for o in objects]
    return header + "---\n" + "---\n".join(docs)
