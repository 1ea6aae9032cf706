"""How the CLI reaches a worker's HTTP API.

- :class:`DirectTransport`: plain HTTP to ``http://host:port`` (tests, or a routable pod IP).
- :class:`ApiServerProxyTransport`: through the Kubernetes API server's pod proxy
  (``/api/v1/namespaces/NS/pods/POD:PORT/proxy/PATH``) with the real ``kubernetes`` client, so
  no network route to the node is needed. The API server authenticates the CLI with the
  kubeconfig's credentials and *removes* the ``Authorization`` header before proxying, so the
  worker token travels in ``X-Kstap-Authorization``. Needs RBAC ``get`` (and ``create`` for the
  control POST) on ``pods/proxy``.
- :class:`PortForwardTransport`: the fallback through ``kubernetes.stream.portforward`` (a
  websocket to ``pods/portforward``), one forwarded connection per request. Needs ``get``/
  ``create`` on ``pods/portforward``.

All of them return a :class:`Response` whose ``read1`` hands over bytes as they arrive.
Failures to connect become :class:`TransportError`; HTTP statuses are left to the caller.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from kstap.errors import EnvironmentProblem, UsageError, WorkerFailure
from kstap.remote import protocol

DEFAULT_CONNECT_TIMEOUT = 5.0
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class TransportError(WorkerFailure):
    """The worker could not be reached (refused, timed out, the proxy could not connect)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint or "check that the worker pods are Running: kubectl get pods -n kstap")


class Response(Protocol):
    status: int

    def read1(self, n: int) -> bytes: ...
    def read(self) -> bytes: ...
    def close(self) -> None: ...


class Transport(Protocol):
    """A way to send one HTTP request to one worker."""

    @property
    def description(self) -> str:
        """Where requests go, for messages (never holds a secret)."""

    def auth_headers(self, token: str) -> dict[str, str]: ...

    def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                body: bytes | None = None, timeout: float = 10.0) -> Response:
        """Send; ``path`` starts with ``/`` and may hold a query. ``timeout`` bounds each read."""


class _HttpClientResponse:
    """http.client's response, closing its connection with it."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._resp = resp
        self.status = resp.status

    def read1(self, n: int) -> bytes:
        try:
            return self._resp.read1(n)
        except (http.client.HTTPException, ValueError, AttributeError) as exc:  # broken chunk, or closed
            raise OSError(f"stream broken: {type(exc).__name__}") from None

    def read(self) -> bytes:
        try:
            return self._resp.read()
        except (http.client.HTTPException, ValueError, AttributeError) as exc:
            raise OSError(f"response broken: {type(exc).__name__}") from None

    def close(self) -> None:
        self._resp.close()
        self._conn.close()


def _http_request(conn: http.client.HTTPConnection, method: str, path: str, headers: Mapping[str, str],
                  body: bytes | None, where: str) -> _HttpClientResponse:
    try:
        conn.request(method, path, body=body, headers=dict(headers))
        return _HttpClientResponse(conn, conn.getresponse())
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise TransportError(f"cannot reach the worker at {where}: {reason}",
                             hint="is the worker running and listening there?") from None


class DirectTransport:
    """HTTP straight to the worker's ``--listen`` address."""

    def __init__(self, base_url: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise UsageError(f"bad worker URL {base_url!r}", hint="e.g. http://127.0.0.1:9090")
        self.base_url = base_url.rstrip("/")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")
        self.connect_timeout = connect_timeout

    @property
    def description(self) -> str:
        return self.base_url

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                body: bytes | None = None, timeout: float = 10.0) -> Response:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise TransportError(f"cannot reach the worker at {self.base_url}: {exc.strerror or exc}",
                                 hint="is the worker running and listening there?") from None
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return _http_request(conn, method, self._prefix + path, headers or {}, body, self.base_url)


def _check_name(kind: str, value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise UsageError(f"bad {kind} name {value!r}", hint="Kubernetes names are lower-case letters, digits and '-'")
    return value


class _PodTransport:
    """What both ways through the API server share: the pod they reach and how they name it."""

    via = ""
    """How, for :attr:`description`."""

    def __init__(self, api_client: Any, namespace: str, pod: str, port: int, *,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        self.api_client = api_client
        self.namespace = _check_name("namespace", namespace)
        self.pod = _check_name("pod", pod)
        self.port = port
        self.connect_timeout = connect_timeout

    @property
    def description(self) -> str:
        return f"pod {self.namespace}/{self.pod}:{self.port} ({self.via})"


class ApiServerProxyTransport(_PodTransport):
    """Through the API server: ``/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/{path}``.

    ``api_client`` is a configured :class:`kubernetes.client.ApiClient` (kubeconfig or in-cluster).
    Responses are streamed (``_preload_content=False``): nothing is buffered in full.
    """

    via = "API server proxy"

    def __init__(self, api_client: Any, namespace: str, pod: str, port: int, *,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        if not 0 < port < 65536:
            raise UsageError(f"bad worker port {port}", hint="a TCP port: 1 .. 65535")
        super().__init__(api_client, namespace, pod, port, connect_timeout=connect_timeout)

    def auth_headers(self, token: str) -> dict[str, str]:
        return {protocol.TOKEN_HEADER: f"Bearer {token}"}

    def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                body: bytes | None = None, timeout: float = 10.0) -> Response:
        url = urlsplit(path)
        resource = (f"/api/v1/namespaces/{quote(self.namespace, safe='')}/pods/"
                    f"{quote(self.pod, safe='')}:{self.port}/proxy{url.path}")
        query = [(k, v) for part in url.query.split("&") if part for k, _, v in [part.partition("=")]]
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        client = self.api_client
        try:
            from kubernetes.client.exceptions import ApiException
            from urllib3.exceptions import HTTPError

            method_, full_url, hdrs2, _, _ = client.param_serialize(
                method=method, resource_path=resource, query_params=query or None, header_params=hdrs,
                auth_settings=["BearerToken"])
            # the REST layer JSON-encodes the body itself: hand it the object (control bodies are JSON)
            payload = json.loads(body) if body is not None else None
            resp = client.call_api(method_, full_url, header_params=hdrs2, body=payload,
                                   _request_timeout=(self.connect_timeout, timeout))
        except ApiException as exc:  # the REST layer raises only for connection trouble here
            raise TransportError(f"cannot reach {self.description}: {exc.reason}",
                                 hint="check the cluster connection (kubectl get pods works?)") from None
        except (HTTPError, OSError) as exc:
            raise TransportError(f"cannot reach {self.description}: {type(exc).__name__}",
                                 hint="check the cluster connection (kubectl get pods works?)") from None
        return _proxy_response(resp.response, self.description)


def _proxy_response(raw: Any, where: str) -> _Urllib3Response:
    resp = _Urllib3Response(raw)
    if resp.status == 403:
        body = resp.read()[:500].decode(errors="replace")
        resp.close()
        raise EnvironmentProblem(f"the API server refused the pod proxy for {where}: {_k8s_message(body)}",
                                 hint="RBAC: kstap needs 'get' and 'create' on pods/proxy in the worker namespace")
    return resp


def _k8s_message(body: str) -> str:
    try:
        obj = json.loads(body)
        return str(obj.get("message") or body)
    except ValueError:
        return body.strip() or "403 Forbidden"


class _Urllib3Response:
    """A urllib3 response (what the kubernetes client returns unpreloaded)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.status = int(raw.status)

    def read1(self, n: int) -> bytes:
        from urllib3.exceptions import HTTPError

        try:
            data = self._raw.read1(n)
        except (HTTPError, ValueError, AttributeError) as exc:  # AttributeError: closed from another thread
            raise OSError(f"stream broken: {type(exc).__name__}") from None
        return bytes(data)

    def read(self) -> bytes:
        from urllib3.exceptions import HTTPError

        try:
            return bytes(self._raw.read())
        except (HTTPError, ValueError, AttributeError) as exc:
            raise OSError(f"response broken: {type(exc).__name__}") from None

    def close(self) -> None:
        # Close first: that closes the connection too, so a body left unread (a control answer, a
        # stream) never reaches the next request on it; then give the pool its slot back. The other
        # order put the connection, unread bytes and all, back into the pool, and the next request
        # through the API server failed with a ProtocolError.
        try:
            self._raw.close()
        finally:
            self._raw.release_conn()


class _ForwardedConnection(http.client.HTTPConnection):
    """http.client over a socket that ``kubernetes.stream.portforward`` provides."""

    def __init__(self, sock_factory: Any, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._factory = sock_factory

    def connect(self) -> None:
        self.sock = self._factory()


class PortForwardTransport(_PodTransport):
    """The fallback: a ``pods/portforward`` websocket per request, HTTP inside it."""

    via = "port-forward"

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def _socket(self) -> socket.socket:
        from kubernetes import client as k8s
        from kubernetes.stream import portforward

        api = k8s.CoreV1Api(self.api_client)
        try:
            pf = portforward(api.connect_get_namespaced_pod_portforward, self.pod, self.namespace,
                             ports=str(self.port))
        except Exception as exc:  # the websocket library raises its own types
            raise TransportError(f"cannot port-forward to {self.description}: {type(exc).__name__}",
                                 hint="RBAC: kstap needs 'get' and 'create' on pods/portforward") from None
        sock: socket.socket = pf.socket(self.port)
        return sock

    def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                body: bytes | None = None, timeout: float = 10.0) -> Response:
        conn = _ForwardedConnection(self._socket, timeout)
        try:
            conn.connect()
        except OSError as exc:
            raise TransportError(f"cannot port-forward to {self.description}: {exc}") from None
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return _http_request(conn, method, path, headers or {}, body, self.description)
