"""kstap.remote.transport with the real ``kubernetes`` client, through a stand-in for the API server's pod proxy.

The stand-in does what kube-apiserver does with ``/api/v1/namespaces/NS/pods/POD:PORT/proxy/PATH``:
it authenticates the caller's bearer token, *removes* the ``Authorization`` header, and streams the
pod's answer back. (tests/kube/fakeapi.py, the full fake API server, is used by the privileged
end-to-end test when it is there.)
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from kubernetes import client as k8s

from kstap.errors import EnvironmentProblem, UsageError
from kstap.model import Interface
from kstap.remote.client import RemoteSource, WorkerEndpoint
from kstap.remote.transport import ApiServerProxyTransport, DirectTransport, TransportError

CLUSTER_TOKEN = "cluster-token-for-tests"
T0 = 1_700_000_000_000_000_000
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "authorization",
       "content-length"}


class PodProxy(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[tuple[str, str, int], int]
    forbidden: bool = False
    seen_headers: list[dict[str, str]]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PodProxy

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _status(self, code: int, message: str) -> None:
        body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                           "code": code}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _proxy(self) -> None:
        url = urlsplit(self.path)
        m = re.match(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/proxy(/.*)?$", url.path)
        if self.headers.get("Authorization") != f"Bearer {CLUSTER_TOKEN}":
            self._status(401, "Unauthorized")
            return
        if m is None:
            self._status(404, "the server could not find the requested resource")
            return
        ns, name_port, rest = unquote(m.group(1)), unquote(m.group(2)), m.group(3) or "/"
        pod, _, port = name_port.partition(":")
        if self.server.forbidden:
            self._status(403, f'pods "{pod}" is forbidden: User "tester" cannot get resource "pods/proxy" '
                              f'in API group "" in the namespace "{ns}"')
            return
        target = self.server.routes.get((ns, pod, int(port or 80)))
        if target is None:
            self._status(404, f'pods "{pod}" not found')
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        self.server.seen_headers.append(dict(headers))
        upstream = http.client.HTTPConnection("127.0.0.1", target, timeout=10)
        try:
            upstream.request(self.command, rest + (f"?{url.query}" if url.query else ""), body=body, headers=headers)
            resp = upstream.getresponse()
        except OSError:
            self._status(503, "error trying to reach service: connection refused")
            return
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                data = resp.read1(1 << 16)
                if not data:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        finally:
            upstream.close()
        self.close_connection = True

    do_GET = do_POST = _proxy


@pytest.fixture
def pod_proxy() -> Iterator[PodProxy]:
    srv = PodProxy(("127.0.0.1", 0), _ProxyHandler)
    srv.routes = {}
    srv.seen_headers = []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def api_client(proxy: PodProxy) -> Any:
    cfg = k8s.Configuration()
    cfg.host = f"http://127.0.0.1:{proxy.server_address[1]}"
    cfg.api_key = {"authorization": CLUSTER_TOKEN}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    return k8s.ApiClient(cfg)


def test_stream_stats_and_control_through_the_pod_proxy(pod_proxy, fake_worker) -> None:
    a = fake_worker("node-a", [Interface("veth0")])
    pod_proxy.routes[("kstap", "kstap-worker-abcde", 9090)] = a.port
    transport = ApiServerProxyTransport(api_client(pod_proxy), "kstap", "kstap-worker-abcde", 9090)
    assert transport.description == "pod kstap/kstap-worker-abcde:9090 (API server proxy)"

    resp = transport.request("GET", "/v1/stats", headers=transport.auth_headers(a.token), timeout=5)
    assert resp.status == 200 and json.loads(resp.read())["node"] == "node-a"
    resp.close()
    # the proxy removed Authorization (it carried the cluster token); the worker token came through
    assert all("Authorization" not in h and "X-Kstap-Authorization" in h for h in pod_proxy.seen_headers)
    assert all(CLUSTER_TOKEN not in json.dumps(h) for h in pod_proxy.seen_headers)

    src = RemoteSource([WorkerEndpoint("node-a", token=a.token, transport=transport)], connect_timeout=5)
    try:
        a.hub.publish_batch(T0 + 100, [(T0 + 10, 3, 3, b"abc", 0, 0)], {0: "kstap: flow id=1"})
        got: list[Any] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got = src.read(100)
        assert got == [(T0 + 10, 3, 3, b"abc", 0, 0)] and src.last_comments == {0: "kstap: flow id=1"}
        assert src.interfaces[0].name == "node-a/veth0"

        with a.applying_control():
            assert src.set_filter("tcp port 80") == {"node-a": "applied"}
        assert a.inbox.current == {"filter": "tcp port 80"}
    finally:
        src.close()


def test_proxy_refusals_become_clear_errors(pod_proxy, fake_worker) -> None:
    a = fake_worker("node-a")
    pod_proxy.routes[("kstap", "w1", 9090)] = a.port
    transport = ApiServerProxyTransport(api_client(pod_proxy), "kstap", "w1", 9090)
    resp = transport.request("GET", "/v1/stats", headers={}, timeout=5)  # no worker token
    assert resp.status == 401
    resp.close()
    missing = ApiServerProxyTransport(api_client(pod_proxy), "kstap", "gone", 9090)
    resp = missing.request("GET", "/v1/stats", headers=missing.auth_headers(a.token), timeout=5)
    assert resp.status == 404
    resp.close()
    pod_proxy.forbidden = True
    with pytest.raises(EnvironmentProblem) as err:
        transport.request("GET", "/v1/stats", headers=transport.auth_headers(a.token), timeout=5)
    assert 'cannot get resource "pods/proxy"' in err.value.message and "pods/proxy" in (err.value.hint or "")


def test_unreachable_api_server_is_a_transport_error() -> None:
    cfg = k8s.Configuration()
    cfg.host = "http://127.0.0.1:1"
    cfg.retries = 0
    transport = ApiServerProxyTransport(k8s.ApiClient(cfg), "kstap", "w1", 9090, connect_timeout=1)
    with pytest.raises(TransportError):
        transport.request("GET", "/v1/stats", timeout=2)


def test_names_and_urls_are_checked() -> None:
    with pytest.raises(UsageError):
        ApiServerProxyTransport(None, "kstap", "../etc", 9090)
    with pytest.raises(UsageError):
        ApiServerProxyTransport(None, "Kstap", "w1", 9090)
    with pytest.raises(UsageError):
        ApiServerProxyTransport(None, "kstap", "w1", 0)
    with pytest.raises(UsageError):
        DirectTransport("ftp://127.0.0.1:21")
    with pytest.raises(TransportError):
        DirectTransport("http://127.0.0.1:1").request("GET", "/healthz", timeout=1)


# -- the port-forward fallback, against a stand-in for pods/portforward (websocket, v4.channel.k8s.io) --
class PortForwardServer(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[tuple[str, str], int]
    requests: list[str]


def _ws_frame(payload: bytes, opcode: int = 2) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return head + payload


def _ws_read(f: Any) -> tuple[int, bytes] | None:
    head = f.read(2)
    if len(head) < 2:
        return None
    opcode, n = head[0] & 0x0F, head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(f.read(2), "big")
    elif n == 127:
        n = int.from_bytes(f.read(8), "big")
    mask = f.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = bytearray(f.read(n))
    for i in range(len(data)):
        data[i] ^= mask[i % 4]
    return opcode, bytes(data)


class _PortForwardHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PortForwardServer

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        import base64
        import hashlib
        import socket

        url = urlsplit(self.path)
        m = re.match(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/portforward$", url.path)
        self.server.requests.append(self.path)
        if m is None or self.headers.get("Authorization") != f"Bearer {CLUSTER_TOKEN}":
            self.send_error(403)
            return
        port = int(dict(p.split("=") for p in url.query.split("&"))["ports"])
        target = self.server.routes[(m.group(1), m.group(2))]
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        port_bytes = port.to_bytes(2, "little")
        self.wfile.write(_ws_frame(b"\0" + port_bytes) + _ws_frame(b"\1" + port_bytes))
        self.wfile.flush()
        upstream = socket.create_connection(("127.0.0.1", target), timeout=10)
        lock = threading.Lock()

        def down() -> None:  # pod → client
            try:
                while True:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    with lock:
                        self.wfile.write(_ws_frame(b"\0" + data))
                        self.wfile.flush()
                with lock:
                    self.wfile.write(_ws_frame(b"", opcode=8))
                    self.wfile.flush()
            except OSError:
                pass

        t = threading.Thread(target=down, daemon=True)
        t.start()
        try:
            while True:
                frame = _ws_read(self.rfile)
                if frame is None or frame[0] == 8:
                    break
                if frame[0] == 2 and frame[1][:1] == b"\0":
                    upstream.sendall(frame[1][1:])
        except OSError:
            pass
        finally:
            upstream.close()
            t.join(2)
        self.close_connection = True


@pytest.fixture
def portforward_server() -> Iterator[PortForwardServer]:
    srv = PortForwardServer(("127.0.0.1", 0), _PortForwardHandler)
    srv.routes = {}
    srv.requests = []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_port_forward_fallback_with_the_real_client(portforward_server, fake_worker) -> None:
    from kstap.remote.transport import PortForwardTransport

    a = fake_worker("node-a", [Interface("veth0")])
    portforward_server.routes[("kstap", "kstap-worker-xyz")] = a.port
    cfg = k8s.Configuration()
    cfg.host = f"http://127.0.0.1:{portforward_server.server_address[1]}"
    cfg.api_key = {"authorization": CLUSTER_TOKEN}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    transport = PortForwardTransport(k8s.ApiClient(cfg), "kstap", "kstap-worker-xyz", 9090)
    resp = transport.request("GET", "/v1/stats", headers=transport.auth_headers(a.token), timeout=5)
    assert resp.status == 200 and json.loads(resp.read())["node"] == "node-a"
    resp.close()
    assert portforward_server.requests[0].endswith("/pods/kstap-worker-xyz/portforward?ports=9090")

    src = RemoteSource([WorkerEndpoint("node-a", token=a.token, transport=transport)], connect_timeout=5)
    try:
        a.hub.publish_batch(T0 + 100, [(T0 + 10, 3, 3, b"abc", 0, 0)])
        got: list[Any] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got = src.read(100)
        assert got == [(T0 + 10, 3, 3, b"abc", 0, 0)]
    finally:
        src.close()


def test_a_proxied_answer_closed_unread_never_goes_back_to_the_pool_open() -> None:
    """The CLI closes control answers without reading them. The transport used to hand the urllib3
    connection back to the pool first (release_conn, then close): bytes of the unread body that
    arrived later were read as the start of the next answer through the API server (ProtocolError,
    seen with the fake API server as every other control request failing). Now the connection is
    closed first, then its pool slot released."""
    from kstap.remote.transport import _Urllib3Response

    calls: list[str] = []

    class Raw:
        status = 202

        def close(self) -> None:
            calls.append("close")

        def release_conn(self) -> None:
            calls.append("release_conn")

    _Urllib3Response(Raw()).close()
    assert calls == ["close", "release_conn"]
