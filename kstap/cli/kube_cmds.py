"""``kstap manifests`` and ``kstap clean``, and :func:`dry_run` for ``kstap tap --dry-run``.

Thin: build settings, check conflicts (exit 2), one call into :mod:`kstap.kube`, print.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer

from kstap.errors import ExitCode, UsageError
from kstap.model import LINKTYPE_ETHERNET

if TYPE_CHECKING:  # the kube package loads only when a Kubernetes command runs
    from kstap.kube.client import Kube, KubeSettings
    from kstap.kube.targets import Targets, TargetSelection


def selection_from_flags(namespaces: list[str], all_namespaces: bool, exclude: list[str],
                         pod_regex: str | None) -> TargetSelection:
    """A checked :class:`TargetSelection` from kubectl-style flags (conflicts are usage errors)."""
    from kstap.kube.targets import TargetSelection
    selection = TargetSelection(list(namespaces), all_namespaces, list(exclude), pod_regex or None)
    selection.validate()
    return selection


def render_dry_run(kube_context: str, targets: Targets, bpf_filter: str, default_namespace: str,
                   *, linktype: int = LINKTYPE_ETHERNET) -> str:
    """The ``--dry-run`` text: targeted pods and each node's compiled filter (pure, for the golden test)."""
    filters = targets.filters(bpf_filter, linktype=linktype)
    by_node = targets.by_node
    lines = [f"kstap dry run: context {kube_context}, {targets.selection.describe(default_namespace)}",
             f"filter: {bpf_filter or '(none: all traffic of the target pods)'}",
             f"{len(targets.pods)} target pod{'s' if len(targets.pods) != 1 else ''} "
             f"on {len(by_node)} node{'s' if len(by_node) != 1 else ''}"]
    for node, pods in by_node.items():
        nf = filters[node]
        ready = targets.node_ready.get(node)
        state = "" if ready is None else (" (Ready)" if ready else " (NOT Ready)")
        lines += ["", f"node {node}{state}: {len(pods)} pod{'s' if len(pods) != 1 else ''}"]
        width = max(len(f"{p.namespace}/{p.name}") for p in pods)
        for p in pods:
            lines.append(f"  {p.namespace + '/' + p.name:<{width}}  {' '.join(p.ips)}")
        lines.append(f"  filter: {nf.expression if len(nf.expression) <= 400 else nf.expression[:397] + '...'}")
        how = {"hosts": "exact pod IPs", "cidrs": f"{len(nf.networks)} CIDR blocks",
               "user-space": "pod IPs checked in user space", "none": "nothing"}[nf.strategy]
        lines.append(f"  compiled: {nf.instructions} BPF instructions, {how}")
        if nf.note:
            lines.append(f"  note: {nf.note}")
    if not by_node:
        lines += ["", "no pod to capture: nothing would be deployed"]
    if targets.skipped:
        lines += ["", "skipped (matching, but not capturable now):"]
        lines += [f"  {name}: {reason}" for name, reason in targets.skipped]
    if targets.notes:
        lines += ["", "notes:"] + [f"  {n}" for n in targets.notes]
    return "\n".join(lines) + "\n"


def dry_run(selection: TargetSelection, bpf_filter: str, kube_settings: KubeSettings, *,
            kube: Kube | None = None, linktype: int = LINKTYPE_ETHERNET) -> str:
    """What ``kstap tap … --dry-run`` prints: resolve the targets, compile every node's filter."""
    from kstap.kube import client, targets

    selection.validate()
    owned = kube is None
    k = client.connect(kube_settings) if kube is None else kube
    try:
        found = targets.resolve(k, selection)
        return render_dry_run(k.context, found, bpf_filter, k.namespace, linktype=linktype)
    finally:
        if owned:
            k.close()


def manifests(
    pod_regex: str | None = typer.Argument(None, metavar="POD_REGEX", help="Regular expression searched in pod names."),
    namespace: list[str] = typer.Option([], "-n", "--namespace", help="Target namespace (repeatable)."),
    all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces", help="Target every namespace."),
    exclude: list[str] = typer.Option([], "-e", "--exclude-namespace", help="With -A: leave out (repeatable)."),
    node: list[str] = typer.Option([], "--node", help="Target these nodes without asking the cluster (repeatable)."),
    bpf_filter: str = typer.Option("", "--bpf-filter", "-f", help="BPF filter the workers start with."),
    worker_image: str | None = typer.Option(None, "--worker-image", help="Worker image (default kstap:VERSION)."),
    worker_namespace: str = typer.Option("kstap", "--worker-namespace", help="Namespace for kstap's objects."),
    memory_budget: str = typer.Option("512Mi", "--memory-budget", help="Memory per worker (request = limit)."),
    cpu_budget: float = typer.Option(1.0, "--cpu-budget", help="CPU cores per worker (request = limit)."),
    mode: str = typer.Option("full", "--mode", help="Sampling: full, percentage or auto."),
    rate: str | None = typer.Option(None, "--rate", help="Share of flows kept: 0.25 or 25%."),
    seed: str | None = typer.Option(None, "--seed", help="Flow-hash seed shared by all workers (default: random)."),
    port: int = typer.Option(8900, "--port", help="Worker API port on each node."),
    interface: list[str] = typer.Option([], "-i", "--interface",
                                        help="Interface the workers capture on (repeatable; default any)."),
    promiscuous: bool = typer.Option(False, "--promiscuous", help="Grant NET_ADMIN for promiscuous mode."),
    run_id: str | None = typer.Option(None, "--run-id", help="Run id for names and labels (default: random)."),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", help="Path to the kubeconfig file."),
    context: str | None = typer.Option(None, "--context", help="The kubeconfig context to use."),
) -> int:
    """Print the YAML kstap would deploy (namespace, ServiceAccount, token and seed Secret, worker DaemonSet)."""
    import secrets

    from kstap import __version__
    from kstap.config import parse_rate, parse_seed, parse_size
    from kstap.kube import manifests as mf

    if node and (namespace or all_namespaces or exclude or pod_regex):
        raise UsageError("--node names the nodes directly; it cannot be combined with -n/-A/-e/POD_REGEX",
                         hint="either let kstap find the target pods' nodes, or give --node NAME")
    if not 1 <= port <= 65535:
        raise UsageError("--port must be between 1 and 65535", hint="the default is 8475")
    if mode not in ("full", "percentage", "auto"):
        raise UsageError(f"unknown --mode {mode!r}", hint="choose full, percentage or auto")
    if not cpu_budget > 0:
        raise UsageError("--cpu-budget must be positive (cores)", hint="e.g. --cpu-budget 0.5")
    memory = parse_size(memory_budget)
    if memory < 16 << 20:
        raise UsageError("--memory-budget must be at least 16Mi", hint="e.g. --memory-budget 256Mi")
    spec = mf.WorkerSpec(
        run_id=mf.check_run_id(run_id) if run_id else mf.new_run_id(), token=mf.new_token(), nodes=list(node),
        image=worker_image or mf.DEFAULT_IMAGE, namespace=worker_namespace, port=port, bpf_filter=bpf_filter,
        interfaces=list(interface) or ["any"],
        mode=mode, rate=parse_rate(rate) if rate else None,
        seed=parse_seed(seed) if seed else secrets.randbits(32), memory_budget=memory, cpu_budget=cpu_budget,
        promiscuous=promiscuous)
    notes: list[str] = []
    if not node:
        from kstap.kube import client, targets
        from kstap.kube.client import KubeSettings
        from kstap.kube.nodefilter import node_filter

        selection = selection_from_flags(namespace, all_namespaces, exclude, pod_regex)
        kube = client.connect(KubeSettings(kubeconfig=kubeconfig, context=context))
        try:
            found = targets.resolve(kube, selection)
        finally:
            kube.close()
        spec.nodes = sorted(found.by_node)
        if not spec.nodes:
            raise UsageError(f"no pod to capture in {selection.describe(kube.namespace)}",
                             hint="check -n/-A and the pod regex with 'kstap tap --dry-run'")
        union = node_filter(bpf_filter, sorted({ip for p in found.pods for ip in p.ips}))
        spec.bpf_filter = union.expression
        notes += found.notes + ([union.note] if union.note else [])
    else:
        notes.append("--node: the pod IPs are not known, workers start with --bpf-filter as given")
    header = (f"# kstap {__version__} manifests, run {spec.run_id}: workers on {', '.join(spec.nodes)}\n"
              "# The Secret holds a fresh worker API token: treat this output as a secret.\n")
    sys.stdout.write(mf.to_yaml(mf.all_objects(spec), header))
    for note in notes:
        print(f"kstap: note: {note}", file=sys.stderr)
    return int(ExitCode.OK)


def clean(
    run: str | None = typer.Option(None, "--run", help="Only this run's objects (default: every run)."),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", help="Path to the kubeconfig file."),
    context: str | None = typer.Option(None, "--context", help="The kubeconfig context to use."),
) -> int:
    """Delete every object kstap created (labelled app.kubernetes.io/managed-by=kstap)."""
    from kstap.kube import client, deploy
    from kstap.kube.client import KubeSettings
    from kstap.kube.manifests import check_run_id

    run_id = check_run_id(run) if run else None
    kube = client.connect(KubeSettings(kubeconfig=kubeconfig, context=context))
    try:
        deleted = deploy.clean(kube, run_id)
    finally:
        kube.close()
    for line in deleted:
        print(f"deleted {line}")
    if not deleted:
        print("nothing to clean" + (f" for run {run_id}" if run_id else ""), file=sys.stderr)
    return int(ExitCode.OK)
