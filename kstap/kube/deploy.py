"""Put the workers on the target nodes, wait until they are Ready, and remove them again.

``apply`` creates each object, or replaces it when it exists (reading its resourceVersion first).
``wait_ready`` polls the DaemonSet's pods: an image that cannot be pulled, a crash loop or a container
that cannot be created fails at once (exit 4, naming the image or the pod); anything else that is not
Ready by the timeout (Pending: unschedulable, still pulling, …) fails with each node's reason.
``clean`` deletes every object labelled ``app.kubernetes.io/managed-by: kstap`` (of one run, or all).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kstap.errors import KstapError, UsageError, WorkerFailure
from kstap.kube.client import Conflict, Kube, NotFound, Op
from kstap.kube.manifests import MANAGED_BY, RUN_LABEL, Obj, WorkerSpec, all_objects, daemonset

IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                                "RegistryUnavailable"})
START_FAILURE_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                                   "PreCreateHookError", "PostStartHookError"})

DEFAULT_READY_TIMEOUT = 120.0
"""Seconds to wait for every worker to be Ready: a first image pull on a cold node can take tens of
seconds; two minutes leaves room without hiding a stuck rollout for long."""


@dataclass(frozen=True)
class Kind:
    """How to reach one kind of object through the typed client."""

    resource: str
    namespaced: bool
    api: str
    """``core``, ``apps`` or ``rbac``: the attribute of :class:`Kube`."""
    suffix: str
    """The method suffix: ``create_<suffix>``, ``read_<suffix>``, ``replace_<suffix>``, ``delete_<suffix>``."""
    plural: str
    """The cluster-wide list method: ``list_<plural>``."""


KINDS: dict[str, Kind] = {
    "Namespace": Kind("namespaces", False, "core", "namespace", "namespace"),
    "ServiceAccount": Kind("serviceaccounts", True, "core", "namespaced_service_account",
                           "service_account_for_all_namespaces"),
    "Secret": Kind("secrets", True, "core", "namespaced_secret", "secret_for_all_namespaces"),
    "DaemonSet": Kind("daemonsets", True, "apps", "namespaced_daemon_set", "daemon_set_for_all_namespaces"),
}
CLEAN_ORDER = ("DaemonSet", "Secret", "ServiceAccount", "Namespace")


@dataclass(frozen=True)
class WorkerPod:
    """A Ready worker: where the CLI reaches it (pod proxy ``namespace/name:port``)."""

    node: str
    namespace: str
    name: str
    port: int
    ip: str


def _fn(kube: Kube, kind: Kind, action: str) -> Callable[..., Any]:
    fn: Callable[..., Any] = getattr(getattr(kube, kind.api), f"{action}_{kind.suffix}")
    return fn


def _args(kind: Kind, obj: Obj) -> tuple[str, ...]:
    meta = obj["metadata"]
    return (meta["name"], meta["namespace"]) if kind.namespaced else (meta["name"],)


def apply(kube: Kube, objects: list[Obj]) -> list[str]:
    """Create each object, or replace it if it exists. Returns ``created kind/name`` lines.

    A namespace that exists and was not created by kstap is left exactly as it is.
    """
    done = []
    for obj in objects:
        kind = KINDS[obj["kind"]]
        meta = obj["metadata"]
        ns = meta.get("namespace") if kind.namespaced else None
        what = f"{obj['kind'].lower()} {ns + '/' if ns else ''}{meta['name']}"
        try:
            if kind.namespaced:
                kube.call(Op("create", kind.resource, ns), _fn(kube, kind, "create"), ns, obj)
            else:
                kube.call(Op("create", kind.resource), _fn(kube, kind, "create"), obj)
            done.append(f"created {what}")
            continue
        except Conflict:
            pass
        current = kube.call(Op("get", kind.resource, ns, meta["name"]), _fn(kube, kind, "read"), *_args(kind, obj))
        if obj["kind"] == "Namespace" and _terminating(current):
            # the previous run's clean deleted it a moment ago: nothing can be created in it until it is
            # gone (kube-apiserver answers 403 "… because it is being terminated"), so wait, then create it
            _await_gone(kube, kind, obj)
            kube.call(Op("create", kind.resource), _fn(kube, kind, "create"), obj)
            done.append(f"created {what} (after the previous one was deleted)")
            continue
        labels = (current.get("metadata") or {}).get("labels") or {}
        if obj["kind"] == "Namespace" and labels.get("app.kubernetes.io/managed-by") != "kstap":
            done.append(f"kept {what} (not kstap's)")
            continue
        body = {**obj, "metadata": {**meta, "resourceVersion": (current.get("metadata") or {}).get("resourceVersion")}}
        kube.call(Op("update", kind.resource, ns, meta["name"]), _fn(kube, kind, "replace"), *_args(kind, obj), body)
        done.append(f"replaced {what}")
    return done


NAMESPACE_GONE_TIMEOUT = 120.0
"""Seconds to wait for a terminating namespace (its pods stop first, up to their grace period)."""


def _terminating(obj: Obj) -> bool:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    return bool(meta.get("deletionTimestamp")) or status.get("phase") == "Terminating"


def _await_gone(kube: Kube, kind: Kind, obj: Obj, timeout: float = NAMESPACE_GONE_TIMEOUT) -> None:
    import time

    name = obj["metadata"]["name"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kube.call(Op("get", kind.resource, None, name), _fn(kube, kind, "read"), name)
        except (NotFound, UsageError):  # kube.call words a missing namespace as a usage error
            return
        time.sleep(0.5)
    raise KstapError(f"namespace {name!r} is still being deleted after {timeout:.0f} s",
                     hint=f"kubectl get namespace {name} -o yaml (its finalizers); or use --worker-namespace")


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


def _waiting(pod: Obj) -> list[tuple[str, str, Obj]]:
    """(reason, message, container status) of every waiting container."""
    out = []
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            out.append((str(waiting.get("reason") or ""), str(waiting.get("message") or ""), cs))
    return out


def _is_ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def pod_failure(pod: Obj, spec: WorkerSpec) -> WorkerFailure | None:
    """A failure that waiting will not cure (exit 4), or None."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    node = pod_node(pod) or "?"
    name = f"{meta.get('namespace')}/{meta.get('name')}"
    for reason, message, cs in _waiting(pod):
        if reason in IMAGE_PULL_REASONS:
            image = cs.get("image") or spec.image
            return WorkerFailure(
                f"the worker image {image!r} cannot be pulled on node {node}: {reason}"
                + (f" ({message})" if message else ""),
                hint="build it from the Dockerfile, push it to a registry the nodes can pull from, and pass "
                     "--worker-image REGISTRY/kstap:TAG")
        if reason == "CrashLoopBackOff":
            last = (cs.get("lastState") or {}).get("terminated") or {}
            why = f"exit code {last.get('exitCode')}" + (f", {last['reason']}" if last.get("reason") else "")
            return WorkerFailure(
                f"the worker {name} on node {node} keeps crashing (CrashLoopBackOff, {why}, "
                f"{cs.get('restartCount', 0)} restarts)",
                hint=f"see why: kubectl logs -n {meta.get('namespace')} {meta.get('name')} --previous")
        if reason in START_FAILURE_REASONS:
            return WorkerFailure(f"the worker {name} on node {node} cannot start: {reason}: {message}",
                                 hint=f"kubectl describe pod -n {meta.get('namespace')} {meta.get('name')}")
    if status.get("phase") == "Failed":
        return WorkerFailure(f"the worker {name} on node {node} failed: {status.get('reason') or ''} "
                             f"{status.get('message') or ''}".rstrip(),
                             hint=f"kubectl describe pod -n {meta.get('namespace')} {meta.get('name')}")
    return None


def pending_reason(pod: Obj) -> str:
    """Why a pod is not Ready yet, in a few words (for the timeout message)."""
    status = pod.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return f"Pending ({c.get('reason') or 'not scheduled'}: {c.get('message') or ''})".replace(": )", ")")
    waiting = _waiting(pod)
    if waiting:
        reason, message, _ = waiting[0]
        return f"{status.get('phase', 'Pending')} ({reason}{': ' + message if message else ''})"
    if status.get("phase") == "Running":
        return "Running but not Ready (the readiness probe /healthz has not passed)"
    return str(status.get("phase") or "Pending")


def _worker_pods(kube: Kube, spec: WorkerSpec) -> dict[str, Obj]:
    body = kube.call(Op("list", "pods", spec.namespace), kube.core.list_namespaced_pod, spec.namespace,
                     label_selector=_selector(spec.selector()))
    by_node: dict[str, Obj] = {}
    for pod in body.get("items") or []:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        node = pod_node(pod)
        if node:
            by_node[node] = pod
    return by_node


def pod_node(pod: Obj) -> str | None:
    """The node a DaemonSet pod belongs to: ``spec.nodeName`` once scheduled, else the node its
    affinity pins it to (the DaemonSet controller sets ``matchFields metadata.name In [node]``)."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return str(spec["nodeName"])
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or []:
        for mf in term.get("matchFields") or []:
            if mf.get("key") == "metadata.name" and mf.get("operator") == "In" and len(mf.get("values") or []) == 1:
                return str(mf["values"][0])
    return None


def ready_workers(kube: Kube, spec: WorkerSpec) -> dict[str, WorkerPod]:
    """The run's Ready workers now, node → :class:`WorkerPod` (one list call)."""
    return {n: _worker_pod(spec, n, p) for n, p in _worker_pods(kube, spec).items() if _is_ready(p)}


def _worker_pod(spec: WorkerSpec, node: str, pod: Obj) -> WorkerPod:
    return WorkerPod(node, spec.namespace, pod["metadata"]["name"], spec.port,
                     str((pod.get("status") or {}).get("podIP") or ""))


def wait_ready(kube: Kube, spec: WorkerSpec, nodes: list[str] | None = None, *,
               timeout: float = DEFAULT_READY_TIMEOUT, poll: float = 1.0,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> dict[str, WorkerPod]:
    """Wait until every node in ``nodes`` (default ``spec.nodes``) has a Ready worker; node → worker."""
    want = sorted(nodes if nodes is not None else spec.nodes)
    deadline = clock() + timeout
    while True:
        pods = _worker_pods(kube, spec)
        for node in want:
            pod = pods.get(node)
            failure = pod_failure(pod, spec) if pod else None
            if failure:
                raise failure
        ready = {n: pods[n] for n in want if n in pods and _is_ready(pods[n])}
        if len(ready) == len(want):
            return {n: _worker_pod(spec, n, p) for n, p in ready.items()}
        if clock() >= deadline:
            late = [n for n in want if n not in ready]
            reasons = "; ".join(f"{n}: {pending_reason(pods[n]) if n in pods else 'no worker pod yet'}" for n in late)
            raise WorkerFailure(
                f"{len(late)} of {len(want)} workers not Ready after {timeout:g} s — {reasons}",
                hint=f"kubectl -n {spec.namespace} describe daemonset {spec.name} (its events show pods it "
                     "could not create, e.g. a Pod Security rejection); allow more time with --ready-timeout")
        sleep(min(poll, max(0.0, deadline - clock())))


def deploy(kube: Kube, spec: WorkerSpec, *, timeout: float = DEFAULT_READY_TIMEOUT,
           sleep: Callable[[float], None] = time.sleep) -> dict[str, WorkerPod]:
    """Apply every object of the run and wait for the workers (node → :class:`WorkerPod`)."""
    apply(kube, all_objects(spec))
    return wait_ready(kube, spec, timeout=timeout, sleep=sleep)


def retarget(kube: Kube, spec: WorkerSpec, nodes: list[str], *, timeout: float = DEFAULT_READY_TIMEOUT,
             sleep: Callable[[float], None] = time.sleep) -> dict[str, WorkerPod]:
    """Move the DaemonSet to ``nodes`` (churn brought targets to new nodes, or emptied some).

    Workers on nodes that stay are not restarted (``OnDelete``); the new nodes' workers are waited for.
    ``spec.nodes`` is updated — or, when that fails, left as it was, so that asking for the same nodes
    again waits for their workers again (they may have become Ready since) instead of returning none.
    """
    added = sorted(set(nodes) - set(spec.nodes))
    before = spec.nodes
    spec.nodes = sorted(nodes)
    try:
        apply(kube, [daemonset(spec)])
        return wait_ready(kube, spec, nodes, timeout=timeout, sleep=sleep) if added else {}
    except KstapError:
        spec.nodes = before
        raise


def clean(kube: Kube, run_id: str | None = None) -> list[str]:
    """Delete every kstap-labelled object (of ``run_id``, or of every run). Returns what was deleted.

    Namespaces kstap created go too — with one run's clean only once no other run's DaemonSet is left
    in them. Objects already gone are not an error.
    """
    labels = dict(MANAGED_BY)
    if run_id:
        labels[RUN_LABEL] = run_id
    selector = _selector(labels)
    deleted = []
    for kind_name in CLEAN_ORDER:
        kind = KINDS[kind_name]
        items = kube.call(Op("list", kind.resource), getattr(getattr(kube, kind.api), f"list_{kind.plural}"),
                          label_selector=_selector(MANAGED_BY) if kind_name == "Namespace" else selector)
        for obj in items.get("items") or []:
            meta = obj.get("metadata") or {}
            ns = meta.get("namespace") if kind.namespaced else None
            if kind_name == "Namespace" and run_id and _still_used(kube, meta["name"]):
                continue
            args = (meta["name"], ns) if kind.namespaced else (meta["name"],)
            try:
                kube.call(Op("delete", kind.resource, ns, meta["name"]), _fn(kube, kind, "delete"), *args,
                          propagation_policy="Background")
            except NotFound:
                continue
            deleted.append(f"{kind_name.lower()} {ns + '/' if ns else ''}{meta['name']}")
    return deleted


def _still_used(kube: Kube, namespace: str) -> bool:
    body = kube.call(Op("list", "daemonsets", namespace), kube.apps.list_namespaced_daemon_set, namespace,
                     label_selector=_selector(MANAGED_BY))
    return bool(body.get("items"))
