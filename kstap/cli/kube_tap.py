"""``kstap tap -n NS [POD_REGEX]``: the Kubernetes path of ``tap`` (glue only, kept thin).

resolve targets → deploy a worker per target node → post each node's filter → merge the workers'
streams (through the API server's pod proxy) in the one pipeline → follow pod churn → clean up.
"""

from __future__ import annotations

import secrets
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from kstap.errors import KstapError, UsageError


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

    @property
    def wanted(self) -> bool:
        return bool(self.pod_regex or self.namespaces or self.all_namespaces or self.exclude)


def run(options: KubeTapOptions, settings: Any, reporter: Any, stop: Any) -> Any:
    """Run (or, with --dry-run, print) a capture of the selected pods; returns the CaptureSummary."""
    from kstap import pipeline
    from kstap.cli.kube_cmds import dry_run, selection_from_flags
    from kstap.kube import deploy
    from kstap.kube import manifests as mf
    from kstap.kube.client import KubeSettings, connect
    from kstap.kube.nodefilter import MATCH_NOTHING
    from kstap.kube.targets import PodWatch, resolve
    from kstap.remote.client import RemoteSource, WorkerEndpoint
    from kstap.remote.transport import ApiServerProxyTransport

    if settings.read or settings.netns:
        raise UsageError("pod targets (-n/-A/POD_REGEX) capture on the cluster: drop --read/--netns",
                         hint="use -i IFACE for a local capture instead")
    selection = selection_from_flags(options.namespaces, options.all_namespaces, options.exclude, options.pod_regex)
    ksettings = KubeSettings(kubeconfig=options.kubeconfig, context=options.context)
    if options.dry_run:
        print(dry_run(selection, settings.bpf_filter, ksettings), end="")
        return None
    kube = connect(ksettings)
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
                             entries=bool(settings.entries), interfaces=list(options.interfaces) or ["any"])
        if options.worker_image:
            spec.image = options.worker_image
        pods = deploy.deploy(kube, spec, timeout=options.ready_timeout)
        endpoints = [WorkerEndpoint(name=node, token=spec.token,
                                    transport=ApiServerProxyTransport(kube.api_client, pod.namespace, pod.name,
                                                                      pod.port))
                     for node, pod in sorted(pods.items())]
        source = RemoteSource(endpoints, on_event=reporter.event)
        filters = found.filters(settings.bpf_filter)
        for node, nf in filters.items():
            source.set_filter(nf.expression, node=node)
            if nf.note:
                reporter.warning(f"{node}: {nf.note}")
        watcher = PodWatch(kube, found, lambda change: _on_change(change, source, settings.bpf_filter, reporter))
        thread = threading.Thread(target=_watch, args=(watcher, reporter), name="kstap-pod-watch", daemon=True)
        thread.start()
        try:
            return pipeline.run_tap(settings, reporter, stop, source=source)
        finally:
            watcher.stop()
            source.close()
    finally:
        if spec is not None and not options.keep_workers:
            try:
                deploy.clean(kube, spec.run_id)
            except KstapError as exc:
                print(f"kstap: warning: cleanup failed ({exc.message}); run 'kstap clean'", file=sys.stderr)
        kube.close()


def _on_change(change: Any, source: Any, bpf_filter: str, reporter: Any) -> None:
    """Pod churn: new per-node filters for the nodes whose IP sets changed (no restart)."""
    filters = change.targets.filters(bpf_filter)
    for node in change.nodes:
        if node in filters:
            result = source.set_filter(filters[node].expression, node=node)
            if any(not str(v).startswith(("applied", "queued")) for v in result.values()):
                reporter.warning(f"{node}: filter update not applied ({result})")
        else:
            reporter.warning(f"targets appeared on node {node!r}, which has no worker of this run: "
                             "restart the capture to include it")


def _watch(watcher: Any, reporter: Any) -> None:
    try:
        watcher.run()
    except KstapError as exc:
        reporter.warning(f"pod watch stopped: {exc.message}")
