"""An in-process fake Kubernetes API server over real HTTP on 127.0.0.1.

It is driven by the real ``kubernetes`` Python client (through a kubeconfig written by
:meth:`FakeApiServer.write_kubeconfig`) and answers the way the real API server does, shape for shape:

- discovery (``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/apis/GROUP/VERSION``);
- namespaces, nodes, pods, secrets, serviceaccounts, daemonsets, clusterroles, clusterrolebindings:
  create (201, 409 AlreadyExists, 404 when the namespace is missing), get, replace (409 on a stale
  resourceVersion), delete (cascading for namespaces and DaemonSets), list with ``labelSelector`` and
  ``fieldSelector`` and a list ``resourceVersion``;
- **watch** (``?watch=1``): chunked JSON lines ``{"type": ..., "object": ...}``, from a resourceVersion
  (or synthetic ADDED events without one), BOOKMARKs when asked, ``timeoutSeconds``; an ERROR event
  with a 410 ``Expired`` Status for a version older than the last :meth:`FakeCluster.compact`;
  :meth:`FakeCluster.drop_watches` cuts every open watch mid-stream like a lost connection;
- Status bodies for errors (401 without the bearer token, 403 for what :meth:`FakeCluster.forbid` says,
  404, 409, 410, and 422 for a multi-value node field selector as kube-apiserver validates it) with the
  real reasons and messages;
- a DaemonSet controller + kubelet: creating or replacing a DaemonSet makes a pod on each node its
  ``matchFields metadata.name In [...]`` affinity allows; each pod's status follows
  :attr:`FakeCluster.worker_behaviour` (ready, image pull failure, crash loop, unschedulable, …).
  With the behaviour ``run`` a :class:`Kubelet` the test plugs in (:attr:`FakeCluster.kubelet`)
  starts a real process for the pod and marks it Ready (:meth:`FakeCluster.mark_ready`); a deleted
  pod is stopped through it, and a DaemonSet pod deleted on its own is re-created (a new name), as
  the real controller does;
- the **pod proxy** ``/api/v1/namespaces/NS/pods/NAME[:PORT]/proxy/PATH`` forwarding any method,
  streaming, to a local address registered with :meth:`FakeCluster.register_proxy` (or for DaemonSet
  pods, :attr:`FakeCluster.proxy_by_node`).

Every request is recorded (:attr:`FakeCluster.requests`) as RBAC sees it: verb, resource, namespace.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

Obj = dict[str, Any]

TOKEN = "fake-token-for-tests"
USER = "kstap-test"


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES = [
    Resource("", "v1", "namespaces", "Namespace", False),
    Resource("", "v1", "nodes", "Node", False),
    Resource("", "v1", "pods", "Pod", True),
    Resource("", "v1", "secrets", "Secret", True),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", True),
    Resource("", "v1", "events", "Event", True),
    Resource("apps", "v1", "daemonsets", "DaemonSet", True),
    Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
]
BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}


@dataclass(frozen=True)
class Request:
    """One API request as RBAC sees it."""

    verb: str
    resource: str
    namespace: str | None
    name: str | None
    method: str
    path: str
    query: str = ""


def status_body(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.body = status_body(code, reason, message, details)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- selectors -------------------------------------------------------------------------------------
def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def label_match(selector: str, labels: dict[str, str]) -> bool:
    for req in _split_selector(selector):
        if " notin " in req:
            key, values = req.split(" notin ", 1)
            if labels.get(key.strip()) in {v.strip() for v in values.strip()[1:-1].split(",")}:
                return False
        elif " in " in req:
            key, values = req.split(" in ", 1)
            if labels.get(key.strip()) not in {v.strip() for v in values.strip()[1:-1].split(",")}:
                return False
        elif "!=" in req:
            key, value = req.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in req:
            key, value = req.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif req.startswith("!"):
            if req[1:] in labels:
                return False
        elif req not in labels:
            return False
    return True


def _field(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def field_match(selector: str, obj: Obj) -> bool:
    for req in _split_selector(selector):
        if "!=" in req:
            key, value = req.split("!=", 1)
            if _field(obj, key.strip()) == value.strip():
                return False
        else:
            key, value = req.replace("==", "=").split("=", 1)
            if _field(obj, key.strip()) != value.strip():
                return False
    return True


# -- the cluster state ---------------------------------------------------------------------------------
@dataclass
class WatchEvent:
    rv: int
    resource: str
    namespace: str | None
    type: str
    object: Obj


class Kubelet(Protocol):
    """What runs DaemonSet pods whose behaviour is ``run`` (a test's launcher of real processes)."""

    def start(self, pod: Obj) -> None:
        """Called on its own thread for a new pod; register its proxy, then :meth:`FakeCluster.mark_ready`."""

    def stop(self, pod: Obj) -> None:
        """Called when the pod object is removed (deleted, cascaded, or its node left the DaemonSet)."""


@dataclass
class FakeCluster:
    """Objects, their history, and the knobs tests turn."""

    rv: int = 100
    store: dict[tuple[str, str | None, str], Obj] = field(default_factory=dict)
    events: list[WatchEvent] = field(default_factory=list)
    compacted: int = 0
    """Watches from a resourceVersion below this get 410 Gone (the current one stays watchable)."""
    forbidden: set[tuple[str, str, str | None]] = field(default_factory=set)
    authorizer: Callable[[str, str, str | None, str | None], bool] | None = None
    """RBAC for every request: (verb, resource incl. subresource, namespace, name) → allowed; a refusal
    is the same 403 as :meth:`forbid` (see tests/kube/rbac.py). None: only ``forbidden`` is refused."""
    requests: list[Request] = field(default_factory=list)
    worker_behaviour: dict[str, str] = field(default_factory=dict)
    """Node → how its DaemonSet pod turns out: ``ready`` (default), ``image-pull``, ``err-image-pull``,
    ``crashloop``, ``unschedulable``, ``starting`` (never Ready), ``config-error``, ``none`` (no pod),
    ``run`` (ContainerCreating until :attr:`kubelet` has started it and calls :meth:`mark_ready`)."""
    default_behaviour: str = "ready"
    kubelet: Kubelet | None = None
    """Runs the ``run`` pods (see :class:`Kubelet`)."""
    proxies: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    proxy_by_node: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Node → local address; DaemonSet pods created on that node are proxied there."""
    token: str = TOKEN

    def __post_init__(self) -> None:
        self.cond = threading.Condition()
        self.kubelet_pods: set[tuple[str, str]] = set()
        """(namespace, name) of the pods :attr:`kubelet` was asked to start and not yet to stop."""
        self.epoch = 0
        """Bumped by :meth:`drop_watches`; a watch that sees it change cuts its connection."""

    # -- knobs ------------------------------------------------------------------------------------
    def forbid(self, verb: str, resource: str, namespace: str | None = None) -> None:
        """403 for ``verb`` on ``resource`` (in ``namespace``, or anywhere when None)."""
        self.forbidden.add((verb, resource, namespace))

    def compact(self) -> None:
        """Forget history: a watch from any version seen so far gets 410 Gone."""
        with self.cond:
            self.compacted = self.rv
            self.events.clear()

    def drop_watches(self) -> None:
        """Cut every open watch connection without a proper end (a lost connection)."""
        with self.cond:
            self.epoch += 1
            self.cond.notify_all()

    def register_proxy(self, namespace: str, pod: str, address: tuple[str, int]) -> None:
        self.proxies[(namespace, pod)] = address

    def watch_requests(self) -> list[Request]:
        return [r for r in self.requests if r.verb == "watch"]

    # -- objects ----------------------------------------------------------------------------------
    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _emit(self, res: str, ns: str | None, kind: str, obj: Obj) -> None:
        self.events.append(WatchEvent(self.rv, res, ns, kind, copy.deepcopy(obj)))
        self.cond.notify_all()

    def put(self, res: Resource, obj: Obj, *, create: bool) -> Obj:
        with self.cond:
            meta = obj.setdefault("metadata", {})
            ns = meta.get("namespace") if res.namespaced else None
            key = (res.plural, ns, meta["name"])
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            old = self.store.get(key)
            if create:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
                meta["generation"] = 1
            elif old is not None:
                meta["uid"] = old["metadata"]["uid"]
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
                meta["generation"] = old["metadata"].get("generation", 1) + 1
            meta["resourceVersion"] = str(self._next_rv())
            self.store[key] = obj
            self._emit(res.plural, ns, "ADDED" if old is None else "MODIFIED", obj)
            return copy.deepcopy(obj)

    def remove(self, res: Resource, ns: str | None, name: str) -> Obj | None:
        with self.cond:
            obj = self.store.pop((res.plural, ns, name), None)
            if obj is None:
                return None
            obj["metadata"]["resourceVersion"] = str(self._next_rv())
            self._emit(res.plural, ns, "DELETED", obj)
        if res.plural == "pods" and self.kubelet is not None and (ns, name) in self.kubelet_pods:
            self.kubelet_pods.discard((ns, name))
            self.kubelet.stop(copy.deepcopy(obj))
        return obj

    def get(self, plural: str, ns: str | None, name: str) -> Obj | None:
        with self.cond:
            obj = self.store.get((plural, ns, name))
            return copy.deepcopy(obj) if obj else None

    def objects(self, plural: str, ns: str | None = None) -> list[Obj]:
        with self.cond:
            return [copy.deepcopy(o) for (p, n, _), o in sorted(self.store.items(), key=lambda kv: str(kv[0]))
                    if p == plural and (ns is None or n == ns)]

    # -- test fixtures: nodes, namespaces, pods ----------------------------------------------------
    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> Obj:
        return self.put(BY_PATH[("", "v1", "namespaces")], {
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}, create=True)

    def add_node(self, name: str, ip: str, *, ready: bool = True) -> Obj:
        return self.put(BY_PATH[("", "v1", "nodes")], {
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            "spec": {"podCIDR": ip.rsplit(".", 1)[0] + ".0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "reason": "KubeletReady" if ready else "KubeletNotReady",
                                       "lastTransitionTime": _now()}],
                       "nodeInfo": {"kubeletVersion": "v1.37.0", "architecture": "amd64",
                                    "operatingSystem": "linux"}}}, create=True)

    def pod_obj(self, ns: str, name: str, node: str | None, ip: str | None, *, phase: str = "Running",
                labels: dict[str, str] | None = None, host_network: bool = False, ipv6: str | None = None) -> Obj:
        node_obj = self.get("nodes", None, node) if node else None
        host_ip = node_obj["status"]["addresses"][0]["address"] if node_obj else None
        status: Obj = {"phase": phase, "conditions": [
            {"type": "PodScheduled", "status": "True" if node else "False"},
            {"type": "Ready", "status": "True" if phase == "Running" else "False"}]}
        if host_ip:
            status["hostIP"] = host_ip
        ips = [x for x in (ip, ipv6) if x]
        if ips:
            status["podIP"] = ips[0]
            status["podIPs"] = [{"ip": x} for x in ips]
        if phase == "Running":
            status["containerStatuses"] = [{"name": "app", "image": "nginx:1.27", "imageID": "", "ready": True,
                                            "restartCount": 0, "started": True,
                                            "state": {"running": {"startedAt": _now()}}}]
        spec: Obj = {"containers": [{"name": "app", "image": "nginx:1.27"}]}
        if node:
            spec["nodeName"] = node
        if host_network:
            spec["hostNetwork"] = True
        return {"metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name.rsplit("-", 1)[0]}},
                "spec": spec, "status": status}

    def add_pod(self, ns: str, name: str, node: str | None, ip: str | None, **kw: Any) -> Obj:
        return self.put(BY_PATH[("", "v1", "pods")], self.pod_obj(ns, name, node, ip, **kw), create=True)

    def update_pod(self, ns: str, name: str, node: str | None, ip: str | None, **kw: Any) -> Obj:
        old = self.get("pods", ns, name)
        assert old is not None
        new = self.pod_obj(ns, name, node, ip, **kw)
        new["metadata"] = old["metadata"]
        return self.put(BY_PATH[("", "v1", "pods")], new, create=False)

    def delete_pod(self, ns: str, name: str) -> None:
        obj = self.remove(BY_PATH[("", "v1", "pods")], ns, name)
        if obj is not None:
            self.pod_deleted(obj)

    def pod_deleted(self, pod: Obj) -> None:
        """The DaemonSet controller's answer to a pod deleted on its own: a new pod for the node."""
        for ref in pod["metadata"].get("ownerReferences") or []:
            if ref.get("kind") != "DaemonSet":
                continue
            ds = self.get("daemonsets", pod["metadata"]["namespace"], ref["name"])
            if ds is not None and ds["metadata"]["uid"] == ref.get("uid"):
                self.reconcile_daemonset(ds)

    def mark_ready(self, ns: str, name: str) -> bool:
        """The kubelet's word that a ``run`` pod's container started and passed its readiness probe."""
        with self.cond:
            pod = self.get("pods", ns, name)
            if pod is None:
                return False
            status = pod["status"]
            status["phase"] = "Running"
            for cond in status["conditions"]:
                if cond["type"] == "Ready":
                    cond["status"] = "True"
            for cs in status.get("containerStatuses") or []:
                cs.update(ready=True, started=True, state={"running": {"startedAt": _now()}})
            self.put(BY_PATH[("", "v1", "pods")], pod, create=False)
        ds_name = next((r["name"] for r in pod["metadata"].get("ownerReferences") or []), None)
        ds = self.get("daemonsets", ns, ds_name) if ds_name else None
        if ds is not None:
            self._ds_status(ds)
        return True

    # -- the DaemonSet controller and kubelet -------------------------------------------------------
    def _eligible_nodes(self, ds: Obj) -> list[str]:
        spec = ds["spec"]["template"]["spec"]
        terms = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                 .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms")
        nodes = [o["metadata"]["name"] for o in self.objects("nodes")]
        if not terms:
            return nodes
        allowed: set[str] = set()
        for term in terms:
            for mf in term.get("matchFields") or []:
                if mf.get("key") == "metadata.name" and mf.get("operator") == "In":
                    allowed.update(mf.get("values") or [])
        return [n for n in nodes if n in allowed]

    @staticmethod
    def _pod_node(pod: Obj) -> str:
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        return str(terms["nodeSelectorTerms"][0]["matchFields"][0]["values"][0])

    def reconcile_daemonset(self, ds: Obj) -> None:
        with self.cond:  # one controller: two reconciles at once must not both create a node's pod
            self._reconcile(ds)

    def _reconcile(self, ds: Obj) -> None:
        ns = ds["metadata"]["namespace"]
        pod_res = BY_PATH[("", "v1", "pods")]
        eligible = set(self._eligible_nodes(ds))
        owned = [p for p in self.objects("pods", ns)
                 if any(o.get("uid") == ds["metadata"]["uid"] for o in p["metadata"].get("ownerReferences", []))]
        on_node = {self._pod_node(p): p for p in owned}
        for node, pod in on_node.items():
            if node not in eligible:
                self.remove(pod_res, ns, pod["metadata"]["name"])
        for node in sorted(eligible - set(on_node)):
            behaviour = self.worker_behaviour.get(node, self.default_behaviour)
            if behaviour == "none":
                continue
            pod = self._worker_pod(ds, node, behaviour)
            stored = self.put(pod_res, pod, create=True)
            addr = self.proxy_by_node.get(node)
            if addr:
                self.register_proxy(ns, pod["metadata"]["name"], addr)
            if behaviour == "run":
                if self.kubelet is None:
                    raise ValueError("the behaviour 'run' needs FakeCluster.kubelet")
                self.kubelet_pods.add((ns, pod["metadata"]["name"]))
                threading.Thread(target=self.kubelet.start, args=(stored,), daemon=True,
                                 name=f"fake-kubelet-{node}").start()
        self._ds_status(ds)

    def _ds_status(self, ds: Obj) -> None:
        ns, name = ds["metadata"]["namespace"], ds["metadata"]["name"]
        eligible = set(self._eligible_nodes(ds))
        pods = [p for p in self.objects("pods", ns)
                if any(o.get("uid") == ds["metadata"]["uid"] for o in p["metadata"].get("ownerReferences", []))]
        ready = sum(1 for p in pods if p["status"].get("phase") == "Running"
                    and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"]))
        with self.cond:
            stored = self.store.get(("daemonsets", ns, name))
            if stored is not None:
                stored["status"] = {"currentNumberScheduled": len(pods), "desiredNumberScheduled": len(eligible),
                                    "numberMisscheduled": 0, "numberReady": ready, "numberAvailable": ready,
                                    "updatedNumberScheduled": len(pods),
                                    "observedGeneration": stored["metadata"].get("generation", 1)}

    def _worker_pod(self, ds: Obj, node: str, behaviour: str) -> Obj:
        template = copy.deepcopy(ds["spec"]["template"])
        node_obj = self.get("nodes", None, node) or {"status": {"addresses": [{"address": "10.255.0.1"}]}}
        node_ip = node_obj["status"]["addresses"][0]["address"]
        container = template["spec"]["containers"][0]
        image = container["image"]
        spec = template["spec"]
        meta = {"name": f"{ds['metadata']['name']}-{uuid.uuid4().hex[:5]}", "namespace": ds["metadata"]["namespace"],
                "labels": template["metadata"].get("labels", {}),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": ds["metadata"]["name"],
                                     "uid": ds["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]}
        cstatus: Obj = {"name": container["name"], "image": image, "imageID": "", "ready": False,
                        "restartCount": 0, "started": False}
        conditions = [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}]
        status: Obj = {"phase": "Pending", "hostIP": node_ip, "podIP": node_ip, "podIPs": [{"ip": node_ip}],
                       "conditions": conditions, "containerStatuses": [cstatus]}
        if behaviour == "ready":
            status["phase"] = "Running"
            conditions[1]["status"] = "True"
            cstatus.update(ready=True, started=True, state={"running": {"startedAt": _now()}})
        elif behaviour in ("image-pull", "err-image-pull"):
            reason = "ImagePullBackOff" if behaviour == "image-pull" else "ErrImagePull"
            cstatus["state"] = {"waiting": {"reason": reason,
                                            "message": f'Back-off pulling image "{image}"'}}
        elif behaviour == "crashloop":
            status["phase"] = "Running"
            cstatus.update(restartCount=4, state={"waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off 1m20s restarting failed container=worker pod={meta['name']}"}},
                lastState={"terminated": {"exitCode": 3, "reason": "Error", "startedAt": _now(),
                                          "finishedAt": _now()}})
        elif behaviour == "config-error":
            cstatus["state"] = {"waiting": {"reason": "CreateContainerConfigError",
                                            "message": 'secret "kstap-token" not found'}}
        elif behaviour == "unschedulable":
            conditions[0].update(status="False", reason="Unschedulable",
                                 message="0/3 nodes are available: 1 Insufficient memory.")
            del status["hostIP"], status["podIP"], status["podIPs"], status["containerStatuses"]
        elif behaviour in ("starting", "run"):
            cstatus["state"] = {"waiting": {"reason": "ContainerCreating"}}
        else:
            raise ValueError(f"unknown worker behaviour {behaviour!r}")
        # The real DaemonSet controller pins each pod to its node with node affinity; the scheduler
        # then sets spec.nodeName (an unschedulable pod has none).
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}}
        if behaviour != "unschedulable":
            spec["nodeName"] = node
        return {"metadata": meta, "spec": spec, "status": status}

    def reconcile_all(self) -> None:
        for ds in self.objects("daemonsets"):
            self.reconcile_daemonset(ds)


# -- HTTP --------------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)
        # Headers and body go out in separate writes: without this, Nagle + delayed ACK add 40 ms a call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def cluster(self) -> FakeCluster:
        return self.server.cluster

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- plumbing ------------------------------------------------------------------------------------
    def _send_json(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _dispatch(self, method: str) -> None:
        try:
            self._route(method)
        except ApiError as exc:
            self._send_json(exc.code, exc.body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
        if parts in (["version"], ["api"], ["apis"], ["healthz"], ["livez"], ["readyz"]):
            self._send_json(200, self._discovery(parts[0]))
            return
        if self.headers.get("Authorization") != f"Bearer {self.cluster.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            self._send_json(200, self._resource_list(group, version))
            return
        ns: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        plural, name, sub = rest[0], (rest[1] if len(rest) > 1 else None), rest[2:]
        res = BY_PATH.get((group, version, plural))
        if res is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if plural == "pods" and sub[:1] == ["proxy"] and name:
            self._proxy(method, ns or "", name, "/" + "/".join(sub[1:]), url.query)
            return
        verb = self._verb(method, name, q)
        epoch = self.cluster.epoch  # before the request is visible: a drop_watches() after it cuts this watch
        self.cluster.requests.append(Request(verb, plural, ns, name, method, url.path, url.query))
        self._authorize(verb, plural, ns, name)
        if verb == "watch":
            self._watch(res, ns, q, epoch)
        elif verb == "list":
            self._list(res, ns, q)
        elif verb == "get":
            self._send_json(200, self._get(res, ns, name or ""))
        elif verb == "create":
            self._create(res, ns, json.loads(self._body() or b"{}"))
        elif verb == "update":
            self._replace(res, ns, name or "", json.loads(self._body() or b"{}"))
        elif verb == "delete":
            self._delete(res, ns, name or "")
        else:
            raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported by the fake")

    @staticmethod
    def _verb(method: str, name: str | None, q: dict[str, str]) -> str:
        if method == "GET":
            if q.get("watch") in ("1", "true", "True"):
                return "watch"
            return "get" if name else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if name else "deletecollection"}[method]

    def _authorize(self, verb: str, resource: str, ns: str | None, name: str | None) -> None:
        f, allow = self.cluster.forbidden, self.cluster.authorizer
        if (verb, resource, None) in f or (verb, resource, ns) in f or (allow and not allow(verb, resource, ns, name)):
            group = next((r.group for r in RESOURCES if r.plural == resource.split("/")[0]), "")
            where = f'in the namespace "{ns}"' if ns else "at the cluster scope"
            what = f'{resource} "{name}"' if name else resource
            raise ApiError(403, "Forbidden",
                           f'{what} is forbidden: User "{USER}" cannot {verb} resource "{resource}" '
                           f'in API group "{group}" {where}',
                           {"name": name, "kind": resource} if name else {"kind": resource})

    def _discovery(self, what: str) -> Obj:
        if what == "version":
            return {"major": "1", "minor": "37", "gitVersion": "v1.37.0-fake", "platform": "linux/amd64"}
        if what == "api":
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                    "serverAddress": f"127.0.0.1:{self.server.server_port}"}]}
        if what == "apis":
            groups = sorted({r.group for r in RESOURCES if r.group})
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}} for g in groups]}
        return {"status": "ok"}

    def _resource_list(self, group: str, version: str) -> Obj:
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
            {"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced, "kind": r.kind,
             "verbs": ["create", "delete", "get", "list", "update", "watch"]}
            for r in RESOURCES if r.group == group and r.version == version]}

    # -- verbs -------------------------------------------------------------------------------------------
    def _not_found(self, res: Resource, name: str) -> ApiError:
        group = f".{res.group}" if res.group else ""
        return ApiError(404, "NotFound", f'{res.plural}{group} "{name}" not found',
                        {"name": name, "kind": res.plural, **({"group": res.group} if res.group else {})})

    def _get(self, res: Resource, ns: str | None, name: str) -> Obj:
        obj = self.cluster.get(res.plural, ns if res.namespaced else None, name)
        if obj is None:
            raise self._not_found(res, name)
        return obj

    def _matching(self, res: Resource, ns: str | None, q: dict[str, str], obj: Obj) -> bool:
        if res.namespaced and ns is not None and obj["metadata"].get("namespace") != ns:
            return False
        if q.get("labelSelector") and not label_match(q["labelSelector"], obj["metadata"].get("labels") or {}):
            return False
        return not (q.get("fieldSelector") and not field_match(q["fieldSelector"], obj))

    def _list(self, res: Resource, ns: str | None, q: dict[str, str]) -> None:
        c = self.cluster
        with c.cond:
            items = [o for o in c.objects(res.plural) if self._matching(res, ns, q, o)]
            rv = str(c.rv)
        for o in items:  # list items carry no kind/apiVersion
            o.pop("kind", None)
            o.pop("apiVersion", None)
        self._send_json(200, {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                              "metadata": {"resourceVersion": rv}, "items": items})

    @staticmethod
    def _validate(res: Resource, body: Obj) -> None:
        """kube-apiserver's validation that kstap's objects have met (422 Invalid, worded like it).

        A node *field* selector (``matchFields``) takes exactly one value with In/NotIn
        (``validateNodeFieldSelectorRequirement`` in pkg/apis/core/validation); the real server refused
        kstap's first DaemonSets, whose single term listed every target node."""
        if res.plural != "daemonsets":
            return
        spec = body.get("spec", {}).get("template", {}).get("spec", {})
        path = "spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        terms = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                 .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
        for i, term in enumerate(terms):
            for j, req in enumerate(term.get("matchFields") or []):
                if req.get("operator") in ("In", "NotIn") and len(req.get("values") or []) != 1:
                    name = body.get("metadata", {}).get("name", "")
                    field = f"{path}.nodeSelectorTerms[{i}].matchFields[{j}].values"
                    raise ApiError(422, "Invalid", f'DaemonSet.apps "{name}" is invalid: {field}: Required value: '
                                   "must be only one value when `operator` is 'In' or 'NotIn' for node field "
                                   "selector", {"name": name, "group": "apps", "kind": "DaemonSet",
                                                "causes": [{"reason": "FieldValueRequired", "field": field}]})

    def _create(self, res: Resource, ns: str | None, body: Obj) -> None:
        c = self.cluster
        self._validate(res, body)
        meta = body.setdefault("metadata", {})
        if res.namespaced:
            if meta.get("namespace") not in (None, ns):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                                                  "namespace sent on the request")
            meta["namespace"] = ns
            if c.get("namespaces", None, ns or "") is None:
                raise ApiError(404, "NotFound", f'namespaces "{ns}" not found',
                               {"name": ns, "kind": "namespaces"})
        name = meta.get("name") or ""
        if c.get(res.plural, ns if res.namespaced else None, name) is not None:
            group = f".{res.group}" if res.group else ""
            raise ApiError(409, "AlreadyExists", f'{res.plural}{group} "{name}" already exists',
                           {"name": name, "kind": res.plural})
        if res.plural == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            body.setdefault("status", {"phase": "Active"})
        if res.plural == "secrets" and "stringData" in body:
            import base64

            body.setdefault("data", {}).update(
                {k: base64.b64encode(v.encode()).decode() for k, v in body.pop("stringData").items()})
        obj = c.put(res, body, create=True)
        if res.plural == "daemonsets":
            c.reconcile_daemonset(obj)
            obj = c.get("daemonsets", ns, name) or obj
        self._send_json(201, obj)

    def _replace(self, res: Resource, ns: str | None, name: str, body: Obj) -> None:
        c = self.cluster
        self._validate(res, body)
        current = c.get(res.plural, ns if res.namespaced else None, name)
        if current is None:
            raise self._not_found(res, name)
        meta = body.setdefault("metadata", {})
        sent = meta.get("resourceVersion")
        if sent and sent != current["metadata"]["resourceVersion"]:
            group = f".{res.group}" if res.group else ""
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.plural}{group} "{name}": the '
                                            "object has been modified; please apply your changes to the latest "
                                            "version and try again", {"name": name, "kind": res.plural})
        if res.namespaced:
            meta["namespace"] = ns
        obj = c.put(res, body, create=False)
        if res.plural == "daemonsets":
            c.reconcile_daemonset(obj)
            obj = c.get("daemonsets", ns, name) or obj
        self._send_json(200, obj)

    def _delete(self, res: Resource, ns: str | None, name: str) -> None:
        c = self.cluster
        self._body()
        obj = c.remove(res, ns if res.namespaced else None, name)
        if obj is None:
            raise self._not_found(res, name)
        if res.plural == "namespaces":
            for r in RESOURCES:
                if r.namespaced:
                    for o in c.objects(r.plural, name):
                        c.remove(r, name, o["metadata"]["name"])
        if res.plural == "daemonsets":
            for p in c.objects("pods", ns):
                if any(o.get("uid") == obj["metadata"]["uid"] for o in p["metadata"].get("ownerReferences", [])):
                    c.remove(BY_PATH[("", "v1", "pods")], ns, p["metadata"]["name"])
        if res.plural == "pods":
            c.pod_deleted(obj)
        self._send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                              "details": {"name": name, "kind": res.plural, "uid": obj["metadata"]["uid"]}})

    # -- watch -------------------------------------------------------------------------------------------
    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, res: Resource, ns: str | None, q: dict[str, str], epoch: int) -> None:
        c = self.cluster
        timeout = float(q.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1", "True")
        since = q.get("resourceVersion") or ""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with c.cond:
            if since and since != "0" and int(since) < c.compacted:
                self._chunk(json.dumps({"type": "ERROR", "object": status_body(
                    410, "Expired", f"too old resource version: {since} ({c.compacted})")}).encode() + b"\n")
                self._chunk(b"")
                return
            if not since or since == "0":
                pending = [WatchEvent(int(o["metadata"]["resourceVersion"]), res.plural, ns, "ADDED", o)
                           for o in c.objects(res.plural) if self._matching(res, ns, q, o)]
                cursor = c.rv
            else:
                cursor = int(since)
                pending = []
        sent_bookmark = False
        while True:
            for ev in pending:
                self._chunk(json.dumps({"type": ev.type, "object": ev.object}).encode() + b"\n")
            with c.cond:
                while True:
                    if c.epoch != epoch or self.server.closing:
                        # A lost connection: cut the socket mid-stream, no terminating chunk.
                        self.close_connection = True
                        try:
                            self.wfile.write(b"3f\r\n{\"type\":\"MODIF")
                            self.wfile.flush()
                            self.connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        return
                    fresh = [e for e in c.events if e.rv > cursor and e.resource == res.plural
                             and self._matching(res, ns, q, e.object)]
                    skipped = [e for e in c.events if e.rv > cursor]
                    if skipped:
                        cursor = max(e.rv for e in skipped)
                    if fresh:
                        pending = fresh
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._chunk(b"")
                        return
                    if bookmarks and not sent_bookmark:
                        sent_bookmark = True
                        pending = [WatchEvent(c.rv, res.plural, ns, "BOOKMARK", {
                            "kind": res.kind, "apiVersion": res.api_version,
                            "metadata": {"resourceVersion": str(c.rv)}})]
                        break
                    c.cond.wait(min(left, 0.5))

    # -- pod proxy -----------------------------------------------------------------------------------------
    def _proxy(self, method: str, ns: str, name_port: str, path: str, query: str) -> None:
        c = self.cluster
        name, _, _port = name_port.partition(":")
        verb = "get" if method in ("GET", "HEAD") else "create" if method == "POST" else method.lower()
        c.requests.append(Request(verb, "pods/proxy", ns, name, method, path, query))
        self._authorize(verb, "pods/proxy", ns, name)
        if c.get("pods", ns, name) is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        target = c.proxies.get((ns, name))
        body = self._body() if method in ("POST", "PUT", "PATCH") else None
        if target is None:
            raise ApiError(503, "ServiceUnavailable",
                           f"error trying to reach service: dial tcp {name_port}: connect: connection refused")
        conn = http.client.HTTPConnection(*target, timeout=60)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "authorization", "connection", "transfer-encoding",
                                        "content-length", "keep-alive")}
        try:
            conn.request(method, path + (f"?{query}" if query else ""), body=body, headers=headers)
            upstream = conn.getresponse()
        except OSError as exc:
            conn.close()
            raise ApiError(503, "ServiceUnavailable",
                           f"error trying to reach service: dial tcp {target[0]}:{target[1]}: {exc}") from None
        try:
            self.send_response(upstream.status, upstream.reason)
            for k, v in upstream.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive"):
                    self.send_header(k, v)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while not self.server.closing:  # a stopped server drops its proxied streams too
                data = upstream.read1(65536)
                if not data:
                    break
                self._chunk(data)
            self._chunk(b"")
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    cluster: FakeCluster
    closing: bool = False

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that go away mid-request (a closed stream) are normal here


class FakeApiServer:
    """The fake on 127.0.0.1, an ephemeral port; a context manager."""

    def __init__(self, cluster: FakeCluster | None = None, port: int = 0) -> None:
        """``port``: 0 picks a free one; a fixed one restarts a stopped server where it was."""
        self.cluster = cluster or FakeCluster()
        self.httpd = _Server(("127.0.0.1", port), _Handler)
        self.httpd.cluster = self.cluster
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="fake-apiserver")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.closing = True
        with self.cluster.cond:
            self.cluster.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.httpd.lock:  # the API server going away: every open connection drops with it
            for conn in list(self.httpd.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, *, context: str = "fake", namespace: str | None = "default",
                         extra_contexts: dict[str, str] | None = None, token: str | None = None,
                         server: str | None = None) -> Path:
        """A kubeconfig whose ``context`` points at this server (bearer token auth)."""
        import yaml

        contexts = {context: namespace, **(extra_contexts or {})}
        doc = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "fake-cluster", "cluster": {"server": server or self.url}}],
            "users": [{"name": "fake-user", "user": {"token": token or self.cluster.token}}],
            "contexts": [{"name": name, "context": {"cluster": "fake-cluster", "user": "fake-user",
                                                    **({"namespace": ns} if ns else {})}}
                         for name, ns in contexts.items()],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(doc))
        return path


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until true (for events that cross threads: a watch seeing a change)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
