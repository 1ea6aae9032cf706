"""``kstap tap -n NS [POD_REGEX]``: the Kubernetes path of ``tap`` (glue only, kept thin).

Checks the flags, prints the plan with ``--dry-run``, connects, and hands the session to
:func:`kstap.pipeline.cluster.run_session` (deploy, merge, follow the churn, clean up).
"""

from __future__ import annotations

from typing import Any

from kstap.errors import UsageError
from kstap.pipeline.cluster import Churn, KubeTapOptions
from kstap.pipeline.cluster import endpoint as _endpoint

__all__ = ["Churn", "KubeTapOptions", "_endpoint", "run"]


def run(options: KubeTapOptions, settings: Any, reporter: Any, stop: Any) -> Any:
    """Run (or, with --dry-run, print) a capture of the selected pods; returns the CaptureSummary."""
    from kstap.cli.kube_cmds import dry_run, selection_from_flags
    from kstap.kube.client import KubeSettings, connect
    from kstap.pipeline.cluster import run_session

    if settings.read or settings.netns:
        raise UsageError("pod targets (-n/-A/POD_REGEX) capture on the cluster: drop --read/--netns",
                         hint="use -i IFACE for a local capture instead")
    selection = selection_from_flags(options.namespaces, options.all_namespaces, options.exclude, options.pod_regex)
    ksettings = KubeSettings(kubeconfig=options.kubeconfig, context=options.context)
    if options.dry_run:
        print(dry_run(selection, settings.bpf_filter, ksettings), end="")
        return None
    kube = connect(ksettings)
    try:
        return run_session(kube, selection, options, settings, reporter, stop)
    finally:
        kube.close()
