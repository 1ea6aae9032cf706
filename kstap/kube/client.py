"""Connect to the API server with the real ``kubernetes`` client; map its failures by status.

kubectl's conventions: ``--kubeconfig`` (else ``$KUBECONFIG``, else ``~/.kube/config``, else the
in-cluster service account), ``--context`` (else the file's current-context), the context's namespace
as the default. Every call goes through :meth:`Kube.call`, which turns an ``ApiException`` or a
transport error into a typed :class:`~kstap.errors.KstapError` naming what was attempted:

==============================  ===========================================================
401                             :class:`EnvironmentProblem` (exit 3): credentials rejected
403                             :class:`Forbidden` (exit 3): names the verb, resource, namespace
404 of a namespace              :class:`UsageError` (exit 2): unknown namespace
404 of anything else            :class:`NotFound`
409                             :class:`Conflict` (deploy turns create into replace)
410                             :class:`Expired` (a watch re-lists)
5xx, refused, timeout, TLS      :class:`ApiUnreachable` (exit 3) with a hint
==============================  ===========================================================
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kstap.backoff import Backoff
from kstap.errors import EnvironmentProblem, KstapError, UsageError

DEFAULT_KUBECONFIG = "~/.kube/config"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where a pod finds its service-account token, CA and namespace (in-cluster config)."""


API_HINT = "rerun with --debug for the full answer; 'kubectl cluster-info' checks the connection"


@dataclass
class KubeSettings:
    """How to reach the cluster (kubectl's flags) and how patient to be with it."""

    kubeconfig: str | None = None
    """--kubeconfig: a kubeconfig path, or several joined by ':' like $KUBECONFIG. None: $KUBECONFIG,
    then ~/.kube/config, then the in-cluster service account."""
    context: str | None = None
    """--context: the kubeconfig context to use. None: the kubeconfig's current-context."""
    request_timeout: float = 15.0
    """Seconds to connect and then to wait for an answer, per request. A healthy API server answers in
    well under a second; an unreachable one must fail in seconds, not hang like kubectl's default."""
    watch_timeout: int = 300
    """Seconds a watch stays open before the server ends it and kstap re-opens it from the last
    resourceVersion (client-go's reflectors use 5-10 minutes). Ending it is normal, not a failure."""
    backoff: Backoff = field(default_factory=Backoff)
    """Delays between reconnects when the API server connection is lost."""


# -- typed errors --------------------------------------------------------------------------------
class Forbidden(EnvironmentProblem):
    """RBAC said no (403): the message names the verb, the resource and the namespace."""

    def __init__(self, message: str, hint: str | None, *, verb: str, resource: str, namespace: str | None) -> None:
        super().__init__(message, hint)
        self.verb = verb
        self.resource = resource
        self.namespace = namespace


class ApiUnreachable(EnvironmentProblem):
    """The API server cannot be reached or keeps failing (refused, timeout, TLS, 5xx)."""


class NotFound(KstapError):
    """A named object does not exist (404)."""


class Conflict(KstapError):
    """The object already exists, or changed under us (409)."""


class Expired(KstapError):
    """The resourceVersion is too old (410 Gone): list again, then watch from the new version."""


@dataclass(frozen=True)
class Op:
    """What a call does, in RBAC's words, so an error can say exactly what was refused."""

    verb: str
    resource: str
    namespace: str | None = None
    name: str | None = None

    def scope(self) -> str:
        return f"in namespace {self.namespace!r}" if self.namespace else "cluster-wide"

    def describe(self) -> str:
        what = f"{self.resource}/{self.name}" if self.name else self.resource
        return f"{self.verb} {what} {self.scope()}"


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            data = json.loads(body)
        except (ValueError, TypeError):
            return str(body).strip()[:200]
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])
    return str(getattr(exc, "reason", "") or "")


def api_error(exc: BaseException, op: Op, server: str = "", context: str = "") -> KstapError:
    """The typed error for ``exc`` raised while doing ``op`` (see the module's table)."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    where = f" at {server}" if server else ""
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        said = _status_message(exc)
        if status == 401:
            return EnvironmentProblem(
                f"the API server{where} rejected the credentials (401 Unauthorized) while trying to {op.describe()}",
                hint=f"log in again or refresh the token of context {context!r}; 'kubectl auth whoami' shows who "
                     "you are" if context else "log in again or refresh the token in the kubeconfig")
        if status == 403:
            ns = f" -n {op.namespace}" if op.namespace else ""
            cluster = "" if op.namespace else " (a ClusterRole)"
            return Forbidden(
                f"forbidden: RBAC does not allow '{op.verb}' on {op.resource} {op.scope()} ({said})",
                hint=f"ask a cluster admin for '{op.verb}' on '{op.resource}'{cluster}; "
                     f"check with: kubectl auth can-i {op.verb} {op.resource}{ns}",
                verb=op.verb, resource=op.resource, namespace=op.namespace)
        if status == 404:
            missing_ns = (op.resource == "namespaces" and op.verb == "get") or (
                op.namespace and f'namespaces "{op.namespace}" not found' in said)
            if missing_ns:
                name = op.name if op.resource == "namespaces" else op.namespace
                return UsageError(f"namespace {name!r} not found{where}",
                                  hint="list namespaces with 'kubectl get namespaces', or use -A for all of them")
            return NotFound(f"{op.resource} {op.name or ''} not found {op.scope()}: {said}".replace("  ", " "),
                            hint="it may have been deleted meanwhile; list what is there with kubectl get")
        if status == 409:
            return Conflict(f"cannot {op.describe()}: {said}",
                            hint="someone else changed it meanwhile; run the command again")
        if status == 410:
            return Expired(f"resource version expired during {op.describe()}: {said}", hint="run the command again")
        if status == 0:
            return ApiUnreachable(f"cannot talk to the API server{where}: {said.splitlines()[-1] if said else exc}",
                                  hint="check the cluster's CA and server address in the kubeconfig "
                                       "('kubectl cluster-info')")
        if status >= 500:
            return ApiUnreachable(f"the API server{where} failed to {op.describe()}: {status} {said}",
                                  hint="the control plane may be overloaded or restarting; try again shortly")
        return KstapError(f"the API server refused to {op.describe()}: {status} {said}", hint=API_HINT)
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        reason = getattr(exc, "reason", None) or exc
        text = str(reason)
        if "refused" in text.lower():
            text = "connection refused"
        elif isinstance(reason, urllib3.exceptions.TimeoutError) or "timed out" in text.lower():
            text = "timed out"
        return ApiUnreachable(f"cannot reach the Kubernetes API server{where}: {text}",
                              hint="is the cluster up and does the context point at it? try 'kubectl cluster-info'; "
                                   "pick another with --context or --kubeconfig")
    return KstapError(f"{op.describe()} failed: {type(exc).__name__}: {exc}", hint=API_HINT)


# -- the client ------------------------------------------------------------------------------------
def _transport_errors() -> tuple[type[BaseException], ...]:
    """What an API call raises for the cluster's reasons (anything else is a bug and propagates)."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    return (ApiException, urllib3.exceptions.HTTPError, OSError)


class Kube:
    """The typed APIs of one cluster, and :meth:`call`, the only way kstap uses them."""

    def __init__(self, api_client: Any, *, context: str, namespace: str, settings: KubeSettings) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.context = context
        """The kubeconfig context in use ('in-cluster' inside a pod)."""
        self.namespace = namespace
        """The context's default namespace (kubectl's, when neither -n nor -A is given)."""
        self.server = str(api_client.configuration.host)
        self.settings = settings

    def call(self, op: Op, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run one API call and return its JSON body (a plain dict, as the API server sent it)."""
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=self.settings.request_timeout, **kwargs)
            data = resp.data
        except _transport_errors() as exc:  # mapped to a typed error right here
            raise self.error(exc, op) from None
        try:
            body = json.loads(data) if data else {}
        except ValueError:  # HTML from a proxy or a login page, not an API server
            body = None
        if not isinstance(body, dict):
            kind = resp.headers.get("Content-Type", "") if getattr(resp, "headers", None) else ""
            raise ApiUnreachable(f"the server at {self.server} answered {op.describe()} with something that is not "
                                 f"Kubernetes JSON ({kind or 'no content type'}: {bytes(data[:40])!r})",
                                 hint="the kubeconfig's server address may point at a web page, a proxy or a "
                                      "login portal instead of the API server; check it with 'kubectl cluster-info'")
        return body

    def stream(self, op: Op, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Open a watch: the raw urllib3 response, read line by line by the caller."""
        read = self.settings.watch_timeout + self.settings.request_timeout
        try:
            return fn(*args, watch=True, _preload_content=False,
                      _request_timeout=(self.settings.request_timeout, read), **kwargs)
        except _transport_errors() as exc:
            raise self.error(exc, op) from None

    def error(self, exc: BaseException, op: Op) -> KstapError:
        return api_error(exc, op, self.server, self.context)

    def close(self) -> None:
        self.api_client.close()


def kubeconfig_paths(explicit: str | None, environ: dict[str, str] | None = None) -> list[str]:
    """The kubeconfig files kubectl would read, in order."""
    env = os.environ if environ is None else environ
    raw = explicit if explicit is not None else env.get("KUBECONFIG") or DEFAULT_KUBECONFIG
    return [str(Path(p).expanduser()) for p in raw.split(os.pathsep) if p]


KUBECONFIG_KEYS = ("clusters", "contexts", "users", "current-context")


def check_kubeconfig_file(path: str) -> None:
    """Environment errors (exit 3) for a file that is not a kubeconfig: binary, malformed YAML, a list, ..."""
    import yaml

    hint = "check it with 'kubectl config view --kubeconfig FILE'; a kubeconfig is a YAML mapping of clusters, " \
           "contexts and users"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EnvironmentProblem(f"kubeconfig {path} is not a text file", hint=hint) from None
    except OSError as exc:
        raise EnvironmentProblem(f"cannot read kubeconfig {path}: {exc.strerror}", hint=hint) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise EnvironmentProblem(f"kubeconfig {path} is not valid YAML{line}: "
                                 f"{getattr(exc, 'problem', None) or exc}", hint=hint) from None
    if data is None:
        return  # empty: kubectl treats it as no configuration, and so does the merge below
    if not isinstance(data, dict):
        raise EnvironmentProblem(f"kubeconfig {path} is a YAML {type(data).__name__}, not a mapping", hint=hint)
    if data.get("kind", "Config") != "Config" or not any(k in data for k in KUBECONFIG_KEYS):
        raise EnvironmentProblem(f"{path} is not a kubeconfig (no clusters, contexts or users)", hint=hint)
    for key in ("clusters", "contexts", "users"):
        if key in data and data[key] is not None and not isinstance(data[key], list):
            raise EnvironmentProblem(f"kubeconfig {path}: '{key}' must be a list", hint=hint)


def connect(settings: KubeSettings, environ: dict[str, str] | None = None) -> Kube:
    """A :class:`Kube` for the selected kubeconfig context, or the in-cluster service account."""
    from kubernetes import client
    from kubernetes.config.config_exception import ConfigException

    config: Any = importlib.import_module("kubernetes.config")  # untyped functions
    env = dict(os.environ) if environ is None else environ
    paths = kubeconfig_paths(settings.kubeconfig, env)
    if settings.kubeconfig is not None:
        for p in paths:
            if not Path(p).is_file():
                raise UsageError(f"--kubeconfig {p}: no such file",
                                 hint="give the path of a kubeconfig file (kubectl config view --raw)")
    existing = [p for p in paths if Path(p).is_file()]
    if not existing:
        if env.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT_DIR / "token").is_file():
            return _in_cluster(settings, env)
        raise EnvironmentProblem(
            "no kubeconfig found and not running inside a cluster",
            hint=f"looked for {', '.join(paths)}; pass --kubeconfig FILE or set KUBECONFIG "
                 "(kubectl's conventions), or run kstap in a pod")
    for p in existing:
        check_kubeconfig_file(p)
    joined = os.pathsep.join(existing)
    try:
        contexts, current = config.list_kube_config_contexts(joined)
    except (ConfigException, OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise EnvironmentProblem(f"cannot read kubeconfig {joined}: {exc}",
                                 hint="check it with 'kubectl config view'") from None
    names = [str(c.get("name")) for c in contexts or []]
    if settings.context is not None and settings.context not in names:
        raise UsageError(f"no context {settings.context!r} in {joined}",
                         hint=f"contexts: {', '.join(names) or 'none'} ('kubectl config get-contexts')")
    chosen = next((c for c in contexts or [] if c.get("name") == settings.context), None) or current
    if not chosen:
        raise UsageError(f"{joined} has no current-context",
                         hint=f"pick one with --context ({', '.join(names) or 'none defined'})")
    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=joined, context=chosen["name"], client_configuration=cfg,
                                persist_config=False)
    except (ConfigException, OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise EnvironmentProblem(f"cannot use context {chosen['name']!r} of {joined}: {exc}",
                                 hint="check it with 'kubectl config view'") from None
    _limit_retries(cfg)
    namespace = (chosen.get("context") or {}).get("namespace") or "default"
    return Kube(client.ApiClient(cfg), context=str(chosen["name"]), namespace=namespace, settings=settings)


def _in_cluster(settings: KubeSettings, env: dict[str, str]) -> Kube:
    from kubernetes import client
    from kubernetes.config.config_exception import ConfigException

    loader_cls: Any = importlib.import_module("kubernetes.config.incluster_config").InClusterConfigLoader
    if settings.context is not None:
        raise UsageError("--context needs a kubeconfig; inside a pod kstap uses its service account",
                         hint="drop --context, or pass --kubeconfig FILE")
    cfg = client.Configuration()
    try:
        loader_cls(token_filename=str(SERVICE_ACCOUNT_DIR / "token"),
                              cert_filename=str(SERVICE_ACCOUNT_DIR / "ca.crt"),
                              environ=env).load_and_set(cfg)
    except ConfigException as exc:
        raise EnvironmentProblem(f"in-cluster configuration is incomplete: {exc}",
                                 hint="the pod needs its service-account token mounted") from None
    _limit_retries(cfg)
    ns_file = SERVICE_ACCOUNT_DIR / "namespace"
    namespace = ns_file.read_text().strip() if ns_file.is_file() else "default"
    return Kube(client.ApiClient(cfg), context="in-cluster", namespace=namespace, settings=settings)


def _limit_retries(cfg: Any) -> None:
    """One quick transport retry; kstap's own backoff handles the rest (and knows what failed)."""
    import urllib3

    cfg.retries = urllib3.Retry(total=1, read=0, status=0, backoff_factor=0.1, raise_on_status=False)
