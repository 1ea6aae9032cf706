"""The cluster session: workers deployed to the target nodes, their streams merged in the one
pipeline, pod churn followed (new filters; a worker for a node that gains targets), cleaned up.

resolve targets → deploy a worker per target node → post each node's filter → capture from the
merged streams (:func:`kstap.pipeline.assembly.run_remote`) while two threads follow the churn
(:class:`Churn`: the pod watch and the worker-pod poller) → clean up.
"""

from __future__ import annotations

import secrets
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from kstap.config import TapSettings
from kstap.contracts import AlertRaised, Reporter, relay
from kstap.errors import KstapError
from kstap.model import CaptureSummary
from kstap.pipeline.stopping import StopFlag
from kstap.vocabulary import AlertLevel

WORKER_POLL = 2.0
DEFAULT_API_BUDGET = 8e6
"""Bytes/s the workers' streams may take through the API server's pod proxy together, by default: kube-apiserver
spent about X ms of CPU per captured MB proxying them here (docs/kubernetes.md, "The data path"), so 8 MB/s costs
it a bounded share of a core; past it the workers' backlogs absorb bursts, then the streams lose packets (a
`worker-gap` alert says how many) rather than the API server its headroom."""
"""Seconds between looks at the run's worker pods (a replaced pod is re-attached within that)."""


@dataclass
class KubeTapOptions:
    """The kubectl-style flags of ``kstap tap``."""

    pod_regex: str | None = None
    namespaces: list[str] = field(default_factory=list)
    all_namespaces: bool = False
    exclude: list[str] = field(default_factory=list)
    kubeconfig: str | None = None
    context: str | None = None
    dry_run: bool = False
    worker_image: str | None = None
    ready_timeout: float = 120.0
    keep_workers: bool = False
    interfaces: list[str] = field(default_factory=list)
    data_path: str = "proxy"
    """How the CLI reaches the workers: ``proxy`` (the API server's pod proxy), ``direct`` (the worker's
    address: the node's, hostNetwork) or ``auto`` (direct when a kstap worker answers there, else the proxy).
    Not ``auto`` by default: probing a node address from a laptop sends it wherever the default route goes
    (a VPN, a proxy that answers anything)."""
    api_budget: float | None = DEFAULT_API_BUDGET
    """Bytes/s all workers' streams together may take through the API server (None: unbounded)."""

    @property
    def wanted(self) -> bool:
        return bool(self.pod_regex or self.namespaces or self.all_namespaces or self.exclude)


def run_session(kube: Any, selection: Any, options: KubeTapOptions, settings: TapSettings, reporter: Reporter,
                stop: StopFlag) -> CaptureSummary:
    """Capture the selected pods on a connected cluster (``kube``) until ``stop``, then clean up."""
    from kstap.kube import deploy
    from kstap.kube import manifests as mf
    from kstap.kube.nodefilter import MATCH_NOTHING
    from kstap.kube.targets import PodWatch, resolve
    from kstap.pipeline.assembly import run_remote
    from kstap.remote.client import RemoteSource

    spec = None
    try:
        found = resolve(kube, selection)
        if not found.by_node:
            raise KstapError("no running pod matches the selection", hint="check -n/-A and the pod regex")
        smp = settings.sampling
        spec = mf.WorkerSpec(run_id=mf.new_run_id(), token=mf.new_token(), nodes=sorted(found.by_node),
                             bpf_filter=MATCH_NOTHING,  # nothing until each node's filter is posted
                             mode=smp.mode, rate=smp.rate if smp.mode != "full" else None,
                             # one seed for every node, or a cross-node flow is kept on one end only
                             seed=smp.seed if smp.seed is not None else secrets.randbits(32),
                             memory_budget=smp.memory_budget or (512 << 20), cpu_budget=smp.cpu_budget or 1.0,
                             entries=bool(settings.entries), interfaces=list(options.interfaces) or ["any"],
                             flow_table=smp.flow_table)
        if options.worker_image:
            spec.image = options.worker_image
        pods = deploy.deploy(kube, spec, timeout=options.ready_timeout)
        # -i any on a node sees a pod's packet on its veth, the bridge and the uplink: one interface per
        # node, each packet once per node (both ends of a cross-node flow stay: two vantage points)
        source = RemoteSource([endpoint(kube, spec, pod, options.data_path) for _, pod in sorted(pods.items())],
                              on_event=relay(reporter), entries=spec.entries, fold_nodes="any" in spec.interfaces,
                              api_budget=options.api_budget)
        if any(w.endpoint.metered for w in source.workers):
            budget = "unbounded" if options.api_budget is None else f"at most {options.api_budget / 1e6:g} MB/s"
            reporter.warning(f"the capture streams through the API server's pod proxy ({budget}, --api-budget); "
                             "run kstap where the nodes' addresses are routable to keep it off the API server")
        filters = found.filters(settings.bpf_filter)
        for node, nf in filters.items():
            source.set_filter(nf.expression, node=node)
            if nf.note:
                reporter.warning(f"{node}: {nf.note}")
        churn = Churn(kube, spec, source, settings.bpf_filter, reporter, options.ready_timeout, options.data_path)
        watcher = PodWatch(kube, found, churn.on_change)
        thread = threading.Thread(target=_watch, args=(watcher, reporter), name="kstap-pod-watch", daemon=True)
        thread.start()
        done = threading.Event()
        follower = threading.Thread(target=churn.follow_workers, args=(done, pods), name="kstap-worker-pods",
                                    daemon=True)
        follower.start()
        try:
            return run_remote(settings, reporter, stop, source)
        finally:
            done.set()
            watcher.stop()
            follower.join(timeout=5)
            source.close()
    finally:
        if spec is not None and not options.keep_workers:
            try:
                deploy.clean(kube, spec.run_id)
            except KstapError as exc:
                print(f"kstap: warning: cleanup failed ({exc.message}); run 'kstap clean'", file=sys.stderr)


def endpoint(kube: Any, spec: Any, pod: Any, data_path: str = "proxy") -> Any:
    """How the CLI reaches one node's worker: straight to its address, or through the API server's pod proxy.

    ``direct`` keeps the capture off kube-apiserver entirely (docs/kubernetes.md, "The data path");
    ``auto`` takes it when the worker's address answers within a second (the CLI runs where the nodes
    are routable: a bastion, a node, a pod), else the pod proxy, whose streams share the API budget.
    """
    from kstap.remote.client import WorkerEndpoint
    from kstap.remote.transport import ApiServerProxyTransport, DirectTransport

    if data_path == "direct" or (data_path == "auto" and pod.ip and reachable(pod.ip, pod.port)):
        host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
        return WorkerEndpoint(name=pod.node, token=spec.token, transport=DirectTransport(f"http://{host}:{pod.port}"))
    return WorkerEndpoint(name=pod.node, token=spec.token, metered=True,
                          transport=ApiServerProxyTransport(kube.api_client, pod.namespace, pod.name, pod.port))


def reachable(ip: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a kstap worker answers its ``/healthz`` at ip:port within ``timeout`` (the auto path's probe:
    an open port alone could be a proxy on the way that answers anything)."""
    import http.client
    import json

    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        body = json.loads(resp.read(4096) or b"{}")
        return resp.status in (200, 503) and isinstance(body, dict) and "state" in body
    except (OSError, ValueError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class Churn:
    """Pod churn during a run (called on the pod watch's thread).

    A node whose target IPs changed gets its new filter (no restart); a node that lost its last
    target keeps its worker with a match-nothing filter (targets often come back, e.g. a rollout);
    a node that gained its first target gets a worker: the DaemonSet's node list grows
    (``deploy.retarget``; ``OnDelete`` leaves the running workers alone), the new worker is waited
    for, attached to the merge and given its filter.
    """

    def __init__(self, kube: Any, spec: Any, source: Any, bpf_filter: str, reporter: Any,
                 ready_timeout: float, data_path: str = "proxy") -> None:
        self.kube, self.spec, self.source, self.data_path = kube, spec, source, data_path
        self.bpf_filter, self.reporter, self.ready_timeout = bpf_filter, reporter, ready_timeout
        self._attached: dict[str, str] = {}
        """Node → the worker pod the source reads from (written by both threads, under the lock)."""
        self._waiting: dict[str, str] = {}
        """Node → its filter, for nodes with targets whose worker did not start in time: the first
        Ready worker pod there is attached by :meth:`follow_workers` (under the lock)."""
        self._lock = threading.Lock()

    def on_change(self, change: Any) -> None:
        from kstap.kube.nodefilter import MATCH_NOTHING

        filters = change.targets.filters(self.bpf_filter)
        have = set(self.source.worker_states())
        new = sorted(n for n in change.nodes if n in filters and n not in have)
        if new:  # blocks this watch thread until the workers are Ready: later churn waits its turn
            self._add_workers(new, {n: f.expression for n, f in filters.items()})
        with self._lock:
            for node in change.nodes:  # a worker still awaited gets the newest filter when it comes
                if node in self._waiting and node not in new:
                    if node in filters:
                        self._waiting[node] = filters[node].expression
                    else:
                        del self._waiting[node]
        for node in change.nodes:
            if node in new or node not in set(self.source.worker_states()):
                continue
            expression = filters[node].expression if node in filters else MATCH_NOTHING
            self._post_filter(node, expression, "filter update not applied")

    def follow_workers(self, done: threading.Event, pods: dict[str, Any], every: float = WORKER_POLL) -> None:
        """Until ``done``: re-attach a node whose worker pod was replaced (deleted and re-created by
        the DaemonSet, evicted, …) to its new pod; the merge then sees a restarted worker (its
        interfaces and counters carry on, its filter is sent again). API server trouble is waited out."""
        from kstap.kube import deploy

        with self._lock:
            for node, pod in pods.items():
                self._attached.setdefault(node, pod.name)
        while not done.wait(every):
            try:
                ready = deploy.ready_workers(self.kube, self.spec)
            except KstapError:
                continue  # the API server is away: the streams reconnect on their own, so do we
            for node, pod in sorted(ready.items()):
                late: str | None = None
                with self._lock:
                    old = self._attached.get(node)
                    if old is None:
                        late = self._waiting.pop(node, None)
                        if late is None:
                            continue  # a new node's worker: on_change attaches it
                        # its worker came up after on_change gave up waiting; the DaemonSet already
                        # names the node (only the wait failed): keep it there
                        self.spec.nodes = sorted({*self.spec.nodes, node})
                    elif old == pod.name:
                        continue
                    self._attached[node] = pod.name
                if late is not None:
                    self._attach(node, pod, late)
                    continue
                self.source.replace_endpoint(endpoint(self.kube, self.spec, pod, self.data_path))
                self._info("worker-replaced", f"node {node}: worker pod {old} was replaced by {pod.name}; "
                                              "reading from it")

    def _add_workers(self, nodes: list[str], filters: dict[str, str]) -> None:
        from kstap.kube import deploy

        try:
            pods = deploy.retarget(self.kube, self.spec, sorted({*self.spec.nodes, *nodes}),
                                   timeout=self.ready_timeout)
        except KstapError as exc:
            self.reporter.warning(f"targets appeared on {', '.join(nodes)}, but no worker started there: "
                                  f"{exc.message}; it joins the capture if it becomes Ready")
            with self._lock:
                self._waiting.update((n, filters[n]) for n in nodes)
            return
        for node in nodes:
            pod = pods.get(node)
            if pod is None:
                continue
            with self._lock:  # from now on follow_workers re-attaches it when its pod is replaced
                self._attached[node] = pod.name
                self._waiting.pop(node, None)
            self._attach(node, pod, filters[node])

    def _post_filter(self, node: str, expression: str, failure: str) -> None:
        """Send a node's worker its filter; a worker that refuses it (or cannot be reached) is a warning."""
        result = self.source.set_filter(expression, node=node)
        if any(not str(v).startswith(("applied", "queued")) for v in result.values()):
            self.reporter.warning(f"{node}: {failure} ({result})")

    def _attach(self, node: str, pod: Any, expression: str) -> None:
        """Read from a new node's worker and give it its filter."""
        self.source.add_endpoint(endpoint(self.kube, self.spec, pod, self.data_path))
        self._post_filter(node, expression, "filter not applied on the new worker")
        self._info("worker-added", f"targets on node {node}: worker {pod.namespace}/{pod.name} added to the capture")

    def _info(self, kind: str, message: str) -> None:
        self.reporter.event(AlertRaised(AlertLevel.INFO, kind, message))


def _watch(watcher: Any, reporter: Any) -> None:
    try:
        watcher.run()
    except KstapError as exc:
        reporter.warning(f"pod watch stopped: {exc.message}")
