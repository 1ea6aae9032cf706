"""Which pods to capture: list them, group their IPs by node, and follow pod churn with a watch.

A *scope* is one namespace, or ``*`` for all namespaces (``-A``). Each scope is listed once; its
list's resourceVersion starts a watch that reports ADDED/MODIFIED/DELETED pods. Resource versions
are opaque strings, so every scope keeps its own. A 410 Gone (the version was compacted away) means
list again and diff; a lost connection means reconnect from the last version seen, with backoff.

The API calls made here — list/watch pods, list nodes and an optional ``get namespaces`` check —
run in the CLI with its user's credentials (the workers make none); docs/kubernetes.md lists them
with the rest of what the user needs, and ``tests/kube/test_rbac.py`` checks that the list is exact.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kstap.errors import KstapError, UsageError
from kstap.kube.client import ApiUnreachable, Expired, Forbidden, Kube, Op
from kstap.kube.nodefilter import NodeFilter, node_filter

__all__ = ["NodeFilter", "PodRef", "PodWatch", "TargetChange", "TargetSelection", "Targets", "node_filter",
           "resolve", "watch"]

ALL = "*"
"""The scope name for -A (every namespace)."""


@dataclass
class TargetSelection:
    """Which pods ``kstap tap`` targets: kubectl's -n/-A plus kubeshark's pod regex."""

    namespaces: list[str] = field(default_factory=list)
    """-n: namespaces to capture in (repeatable). Empty without -A: the context's namespace."""
    all_namespaces: bool = False
    """-A: every namespace, minus ``exclude``."""
    exclude: list[str] = field(default_factory=list)
    """-e/--exclude-namespace: namespaces -A leaves out (repeatable)."""
    pod_regex: str | None = None
    """POD_REGEX: a regular expression searched in pod names (``re.search``); None: every pod."""

    def validate(self) -> None:
        """Conflicting or malformed choices are usage errors (exit 2)."""
        if self.all_namespaces and self.namespaces:
            raise UsageError("-n and -A cannot be used together",
                             hint="-A targets every namespace; leave some out with -e NS")
        if self.exclude and not self.all_namespaces:
            raise UsageError("-e/--exclude-namespace only applies with -A",
                             hint="with -n, list only the namespaces you want")
        for ns in [*self.namespaces, *self.exclude]:
            if not ns or "/" in ns or ns != ns.strip():
                raise UsageError(f"bad namespace name {ns!r}", hint="a namespace is a DNS label, e.g. 'prod'")
        self.regex()

    def regex(self) -> re.Pattern[str] | None:
        if not self.pod_regex:
            return None
        try:
            return re.compile(self.pod_regex)
        except re.error as exc:
            raise UsageError(f"bad pod regex {self.pod_regex!r}: {exc}",
                             hint="a Python regular expression searched in pod names, e.g. '^web-'") from None

    def scopes(self, default_namespace: str) -> list[str]:
        if self.all_namespaces:
            return [ALL]
        return list(dict.fromkeys(self.namespaces)) or [default_namespace]

    def describe(self, default_namespace: str) -> str:
        if self.all_namespaces:
            ex = f" except {', '.join(self.exclude)}" if self.exclude else ""
            where = f"all namespaces{ex}"
        else:
            where = "namespace" + ("s " if len(self.scopes(default_namespace)) > 1 else " ")
            where += ", ".join(self.scopes(default_namespace))
        return where + (f", pods matching {self.pod_regex!r}" if self.pod_regex else "")


@dataclass(frozen=True, order=True)
class PodRef:
    """A target pod: where it runs and its addresses (IPv4 and/or IPv6)."""

    namespace: str
    name: str
    node: str
    ips: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass
class Targets:
    """The pods targeted at one moment, and what is needed to keep following them."""

    selection: TargetSelection
    pods: list[PodRef]
    resource_versions: dict[str, str]
    """Scope (a namespace, or ``*``) → the resourceVersion its list or last watch event returned."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(namespace/name, reason)`` of pods that match but cannot be captured now (Pending, no IP, …)."""
    notes: list[str] = field(default_factory=list)
    node_ready: dict[str, bool] = field(default_factory=dict)
    """Node name → Ready condition, for the nodes kstap could list (empty when RBAC forbids it)."""

    @property
    def by_node(self) -> dict[str, list[PodRef]]:
        """Node name → its target pods, nodes and pods sorted."""
        out: dict[str, list[PodRef]] = {}
        for pod in sorted(self.pods, key=lambda p: (p.node, p.namespace, p.name)):
            out.setdefault(pod.node, []).append(pod)
        return out

    def node_ips(self) -> dict[str, list[str]]:
        """Node name → the sorted, distinct IPs of its target pods (what its filter must hold)."""
        return {node: sorted({ip for p in pods for ip in p.ips}, key=_ip_sort_key)
                for node, pods in self.by_node.items()}

    def filters(self, user_expression: str, **kwargs: Any) -> dict[str, NodeFilter]:
        """Each target node's filter (see :func:`kstap.kube.nodefilter.node_filter`)."""
        return {node: node_filter(user_expression, ips, **kwargs) for node, ips in self.node_ips().items()}


@dataclass(frozen=True)
class TargetChange:
    """What a watch event (or a re-list) changed."""

    targets: Targets
    """The whole new state."""
    added: tuple[PodRef, ...]
    removed: tuple[PodRef, ...]
    nodes: tuple[str, ...]
    """Nodes whose set of target IPs changed (including nodes that gained their first or lost their
    last target): their workers need a new filter, and a new node needs a worker."""
    relisted: bool = False
    """True when the change was found by listing again after a 410 Gone."""


def _ip_sort_key(ip: str) -> tuple[int, str]:
    import ipaddress

    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return (9, ip)
    return (addr.version, f"{int(addr):040d}")


def classify(obj: dict[str, Any], selection: TargetSelection, regex: re.Pattern[str] | None) -> PodRef | str | None:
    """A target (:class:`PodRef`), the reason a matching pod is skipped (str), or None: not selected."""
    meta = obj.get("metadata") or {}
    ns, name = meta.get("namespace", ""), meta.get("name", "")
    if selection.all_namespaces and ns in selection.exclude:
        return None
    if regex is not None and not regex.search(name):
        return None
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    phase = status.get("phase") or "Unknown"
    if phase != "Running":
        return f"phase {phase}"
    if spec.get("hostNetwork"):
        return "hostNetwork: its IP is the node's, a filter on it would take all of the node's traffic"
    ips = tuple(dict.fromkeys(p["ip"] for p in status.get("podIPs") or [] if p.get("ip")))
    if not ips and status.get("podIP"):
        ips = (status["podIP"],)
    if not ips:
        return "no pod IP yet"
    node = spec.get("nodeName")
    if not node:
        return "not scheduled on a node"
    return PodRef(ns, name, node, ips)


def check_namespaces(kube: Kube, names: list[str]) -> list[str]:
    """Fail with exit 2 for a namespace that does not exist (a pod list there is just empty).

    Needs ``get namespaces`` (the user's rights, not the workers'); when RBAC forbids it the check is
    skipped and a note says so.
    """
    notes = []
    for name in names:
        op = Op("get", "namespaces", None, name)
        try:
            kube.call(op, kube.core.read_namespace, name)
        except Forbidden:
            notes.append(f"cannot check that namespace {name!r} exists (RBAC forbids 'get namespaces')")
    return notes


def _list_pods(kube: Kube, scope: str) -> dict[str, Any]:
    if scope == ALL:
        return kube.call(Op("list", "pods"), kube.core.list_pod_for_all_namespaces)
    return kube.call(Op("list", "pods", scope), kube.core.list_namespaced_pod, scope)


def resolve(kube: Kube, selection: TargetSelection) -> Targets:
    """List the selected pods and group them by node (Running pods with an IP only)."""
    selection.validate()
    regex = selection.regex()
    notes: list[str] = []
    if not selection.all_namespaces:
        notes += check_namespaces(kube, selection.scopes(kube.namespace))
    pods: list[PodRef] = []
    skipped: list[tuple[str, str]] = []
    versions: dict[str, str] = {}
    for scope in selection.scopes(kube.namespace):
        body = _list_pods(kube, scope)
        versions[scope] = str((body.get("metadata") or {}).get("resourceVersion") or "")
        for item in body.get("items") or []:
            got = classify(item, selection, regex)
            if isinstance(got, PodRef):
                pods.append(got)
            elif isinstance(got, str):
                meta = item.get("metadata") or {}
                skipped.append((f"{meta.get('namespace')}/{meta.get('name')}", got))
    targets = Targets(selection, sorted(pods), versions, sorted(skipped), notes)
    _check_nodes(kube, targets)
    return targets


def _check_nodes(kube: Kube, targets: Targets) -> None:
    try:
        body = kube.call(Op("list", "nodes"), kube.core.list_node)
    except Forbidden:
        targets.notes.append("cannot list nodes (RBAC): node readiness not checked")
        return
    for item in body.get("items") or []:
        conditions = (item.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        targets.node_ready[(item.get("metadata") or {}).get("name", "")] = ready
    for node in targets.by_node:
        if targets.node_ready.get(node) is False:
            targets.notes.append(f"node {node} is not Ready: its worker may not start")


# -- watch ---------------------------------------------------------------------------------------
def _lines(resp: Any) -> Iterator[str]:
    """The JSON lines of a watch response, as they arrive."""
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line.decode("utf-8", errors="replace")
    if buf.strip():
        yield buf.decode("utf-8", errors="replace")


class PodWatch:
    """Follow pod churn from a :class:`Targets` on; call ``on_change`` when a node's IP set changes.

    :meth:`run` blocks until :meth:`stop` (from another thread) and raises a :class:`KstapError` when
    it cannot go on: RBAC refused, or the API server stayed unreachable for ``backoff.attempts``
    consecutive attempts (exit 3). A dropped connection is re-opened from the last resourceVersion after
    ``backoff.delay(n)`` seconds; a 410 Gone re-lists the scope and reports the difference.
    """

    def __init__(self, kube: Kube, targets: Targets, on_change: Callable[[TargetChange], None], *,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.kube = kube
        self.selection = targets.selection
        self.regex = targets.selection.regex()
        self.on_change = on_change
        self.backoff = kube.settings.backoff
        self._pods = {p.key: p for p in targets.pods}
        self._versions = dict(targets.resource_versions)
        self._targets = targets
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sleep = sleep
        self._open: set[Any] = set()
        self._error: KstapError | None = None
        self.reconnects = 0
        """How many times a lost connection was re-opened (for tests and the dashboard)."""
        self.relists = 0

    @property
    def targets(self) -> Targets:
        with self._lock:
            return self._targets

    def stop(self) -> None:
        """End :meth:`run`: also unblocks a read waiting on the API server."""
        self._stop.set()
        with self._lock:
            open_now = list(self._open)
        for resp in open_now:
            with contextlib.suppress(Exception):  # already closed
                resp.shutdown()

    def run(self) -> None:
        scopes = list(self._versions)
        if len(scopes) == 1:
            self._follow(scopes[0])
        else:
            threads = [threading.Thread(target=self._follow_catching, args=(s,), name=f"kstap-watch-{s}",
                                        daemon=True) for s in scopes]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if self._error is not None:
            raise self._error

    def _follow_catching(self, scope: str) -> None:
        try:
            self._follow(scope)
        except KstapError as exc:
            self._error = self._error or exc
            self.stop()

    def _wait(self, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
        else:
            self._stop.wait(seconds)

    def _follow(self, scope: str) -> None:
        failures = 0
        expired = 0

        def opened() -> None:  # a connection that was established resets the backoff
            nonlocal failures
            failures = 0

        while not self._stop.is_set():
            try:
                self._stream(scope, opened)
                failures = expired = 0
            except Expired:
                expired += 1
                if expired > 1:  # expired again straight after a re-list: do not spin
                    self._wait(self.backoff.delay(expired - 1))
                self._relist(scope)
                failures = 0
            except ApiUnreachable as exc:
                if self._stop.is_set():
                    return
                failures += 1
                if failures > self.backoff.attempts:
                    raise ApiUnreachable(f"lost the pod watch and could not reconnect after {failures - 1} "
                                         f"attempts: {exc.message}", hint=exc.hint) from None
                self._wait(self.backoff.delay(failures))
                self.reconnects += 1

    def _stream(self, scope: str, opened: Callable[[], None]) -> None:
        import urllib3

        kube = self.kube
        kwargs: dict[str, Any] = {"resource_version": self._versions.get(scope) or None,
                                  "allow_watch_bookmarks": True,
                                  "timeout_seconds": kube.settings.watch_timeout}
        if scope == ALL:
            op = Op("watch", "pods")
            resp = kube.stream(op, kube.core.list_pod_for_all_namespaces, **kwargs)
        else:
            op = Op("watch", "pods", scope)
            resp = kube.stream(op, kube.core.list_namespaced_pod, scope, **kwargs)
        opened()
        with self._lock:
            self._open.add(resp)
        try:
            if self._stop.is_set():
                return
            for line in _lines(resp):
                if self._stop.is_set():
                    return
                self._event(scope, json.loads(line), op)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if self._stop.is_set():
                return
            raise kube.error(exc if not isinstance(exc, ValueError) else OSError(str(exc)), op) from None
        finally:
            with self._lock:
                self._open.discard(resp)
            resp.release_conn()

    def _event(self, scope: str, event: dict[str, Any], op: Op) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise Expired(str(obj.get("message", "resource version too old")),
                              hint="the watch restarts from a new list")
            if isinstance(code, int) and (code >= 500 or code == 429):  # the server's trouble: retry
                raise ApiUnreachable(f"the pod watch failed: {code} {obj.get('message', '')}",
                                     hint="the control plane may be overloaded; kstap retries")
            raise KstapError(f"the pod watch failed: {code} {obj.get('message', '')}",
                             hint="check that you may watch pods: kubectl auth can-i watch pods")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self._versions[scope] = str(rv)
        if kind == "BOOKMARK":
            return
        got = None if kind == "DELETED" else classify(obj, self.selection, self.regex)
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        with self._lock:
            before = dict(self._pods)
            if isinstance(got, PodRef):
                self._pods[key] = got
            else:
                self._pods.pop(key, None)
            self._publish(before, relisted=False)

    def _relist(self, scope: str) -> None:
        body = _list_pods(self.kube, scope)
        self.relists += 1
        fresh = {}
        for item in body.get("items") or []:
            got = classify(item, self.selection, self.regex)
            if isinstance(got, PodRef):
                fresh[got.key] = got
        with self._lock:
            self._versions[scope] = str((body.get("metadata") or {}).get("resourceVersion") or "")
            before = dict(self._pods)
            for key in [k for k in self._pods if scope == ALL or k[0] == scope]:
                del self._pods[key]
            self._pods.update(fresh)
            self._publish(before, relisted=True)

    def _publish(self, before: dict[tuple[str, str], PodRef], *, relisted: bool) -> None:
        """Call on_change if the per-node IP sets changed (lock held: changes are reported in order)."""
        after = self._pods
        old = Targets(self.selection, sorted(before.values()), {})
        new = Targets(self.selection, sorted(after.values()), dict(self._versions),
                      node_ready=self._targets.node_ready)
        old_ips, new_ips = old.node_ips(), new.node_ips()
        nodes = tuple(sorted(n for n in set(old_ips) | set(new_ips) if old_ips.get(n) != new_ips.get(n)))
        self._targets = new
        if not nodes:
            return
        added = tuple(sorted(p for k, p in after.items() if before.get(k) != p))
        removed = tuple(sorted(p for k, p in before.items() if after.get(k) != p))
        self.on_change(TargetChange(new, added, removed, nodes, relisted))


def watch(kube: Kube, targets: Targets, on_change: Callable[[TargetChange], None], *,
          stop: threading.Event | None = None) -> None:
    """Follow pod churn until ``stop`` is set (blocking; run it in a thread). See :class:`PodWatch`."""
    pw = PodWatch(kube, targets, on_change)
    if stop is None:
        pw.run()
        return
    done = threading.Event()

    def relay() -> None:
        while not done.is_set():
            if stop.wait(0.2):
                pw.stop()
                return

    threading.Thread(target=relay, daemon=True, name="kstap-watch-stop").start()
    try:
        pw.run()
    finally:
        done.set()
