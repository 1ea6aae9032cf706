"""Shell completion of option values: fixed vocabularies, and namespaces and pods from the current context.

Typer calls these while the shell completes (``kstap --install-completion`` sets it up; ``kubectl kstap``
completes through the plugin's own script). Cluster look-ups use the same kubeconfig, ``--kubeconfig`` and
``--context`` as the command would, with a short timeout, and complete nothing when the cluster cannot be
reached: a completion must never hang the shell or print an error into it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from kstap.config import BACKENDS, PROFILES

MODES = ("full", "percentage", "auto")
COMPLETION_TIMEOUT = 2.0
"""Seconds a cluster look-up may take while the user waits at the prompt (kubectl's is 5 s)."""


def _starting(values: Any, incomplete: str) -> list[str]:
    return [v for v in values if v.startswith(incomplete)]


def modes(incomplete: str) -> list[str]:
    return _starting(MODES, incomplete)


def profiles(incomplete: str) -> list[str]:
    return _starting(PROFILES, incomplete)


def backends(incomplete: str) -> list[str]:
    return _starting(BACKENDS, incomplete)


def _kube(ctx: Any) -> Any:
    """A connected :class:`kstap.kube.client.Kube` for the command line being completed, or None."""
    from kstap.errors import KstapError
    from kstap.kube.client import KubeSettings, connect

    params = getattr(ctx, "params", {}) or {}
    settings = KubeSettings(kubeconfig=params.get("kubeconfig"), context=params.get("context"),
                            request_timeout=COMPLETION_TIMEOUT)
    try:
        return connect(settings)
    except KstapError:
        return None


def _names(ctx: Any, list_call: Callable[[Any], dict[str, Any]]) -> list[str]:
    from kstap.errors import KstapError

    kube = _kube(ctx)
    if kube is None:
        return []
    try:
        body = list_call(kube)
    except KstapError:
        return []
    finally:
        with contextlib.suppress(Exception):
            kube.close()
    return sorted(str((item.get("metadata") or {}).get("name", "")) for item in body.get("items") or [])


def namespaces(ctx: Any, incomplete: str) -> list[str]:
    """Namespaces of the current context, as ``kubectl get ns -o name`` lists them."""
    from kstap.kube.client import Op

    names = _names(ctx, lambda kube: kube.call(Op("list", "namespaces"), kube.core.list_namespace))
    return _starting(names, incomplete)


def pods(ctx: Any, incomplete: str) -> list[str]:
    """Pods of the namespaces given so far with -n (else the context's default; -A: every namespace)."""
    from kstap.kube.client import Op

    params = getattr(ctx, "params", {}) or {}
    chosen = list(params.get("namespace") or [])

    def listing(kube: Any) -> dict[str, Any]:
        if params.get("all_namespaces"):
            body: dict[str, Any] = kube.call(Op("list", "pods"), kube.core.list_pod_for_all_namespaces)
            return body
        items: list[Any] = []
        for ns in chosen or [kube.namespace]:
            items += kube.call(Op("list", "pods", ns), kube.core.list_namespaced_pod, ns).get("items") or []
        return {"items": items}

    return _starting(sorted(set(_names(ctx, listing))), incomplete)


def contexts(ctx: Any, incomplete: str) -> list[str]:
    """Context names of the kubeconfig (no cluster needed)."""
    from kstap.kube.client import kubeconfig_paths

    config: Any = __import__("kubernetes.config", fromlist=["list_kube_config_contexts"])
    params = getattr(ctx, "params", {}) or {}
    existing = [p for p in kubeconfig_paths(params.get("kubeconfig")) if os.path.isfile(p)]
    try:
        found, _current = config.list_kube_config_contexts(os.pathsep.join(existing))
    except Exception:  # any broken kubeconfig: complete nothing rather than break the shell
        return []
    return _starting(sorted(str(c.get("name")) for c in found or []), incomplete)
