"""The worker's HTTP API (stdlib ``http.server``, one thread per connection).

==========================  ============================================================================
``GET  /healthz``           no token. 200 ``{"state": "capturing"}``; 503 while starting, after the end or
                            on failure (the pod's readiness probe).
``GET  /v1/stream``         the capture as a chunked :mod:`kstap.remote.protocol` stream. Query:
                            ``after=SEQ`` (resume after that frame) and ``run=ID`` (the run it refers
                            to; another run starts from the beginning of the backlog).
``GET  /v1/stats``          JSON: node, run, state, interfaces and their counters, the latest stats
                            snapshot, the backlog, the live control state.
``POST /v1/control``        JSON ``{"rate": 0.25}`` and/or ``{"filter": "tcp port 80"}``, at most
                            :data:`MAX_CONTROL_BODY` bytes. 200 once the capture loop applied it, 202 if
                            it was queued but not yet applied, 400 malformed, 409 not applicable
                            (e.g. a rate in full or auto mode).
==========================  ============================================================================

Every route but ``/healthz`` needs ``Authorization: Bearer <token>`` (or the same value in
``X-Kstap-Authorization``, which survives the API server's pod proxy). Tokens are compared as
SHA-256 digests with :func:`hmac.compare_digest`: constant time, whatever their length; only
spaces and tabs around the token are ignored. Nothing here logs request headers.

Every request gets a status line and one of these statuses, never a 500 and never a bare body:
200/202 as above, 400 (a malformed request line, target, query or body; HTTP/0.9), 401 (no or
wrong token), 404, 405, 409, 414/431 (request line or headers too long), 501 (a method it does not
know), 503 and 505 (an HTTP version other than 1.x). ``fuzz/remote_targets.py`` checks this.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import selectors
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

from kstap.remote import protocol
from kstap.remote.hub import ControlInbox, ControlRejected, ControlRequest, StreamHub

MAX_CONTROL_BODY = 4096
MAX_FILTER_CHARS = 4096
MAX_STREAMS = 8
"""Concurrent stream readers (the CLI needs one; more is a reconnect storm or a misuse)."""
HEARTBEAT = 1.0
"""Seconds an idle, caught-up reader waits at most for a frame: then it gets a heartbeat with the
same watermark (a liveness beat). A watermark that moves wakes the reader's stream at once, so an
idle worker's readers hear of it at every turn of its capture loop (4 a second) without this timer."""
HELLO_WAIT = 10.0
"""How long a stream request waits for the capture to start before answering 503."""
CONTROL_WAIT = 3.0
"""How long a control request waits for the capture loop to apply it before answering 202."""


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class WorkerAPI:
    """The HTTP server of one worker: bound at construction, serving once :meth:`start` ran."""

    def __init__(self, address: tuple[str, int], token: str, hub: StreamHub, control: ControlInbox, *,
                 log: Callable[[str], None] | None = None, max_streams: int = MAX_STREAMS,
                 heartbeat: float = HEARTBEAT, hello_wait: float | None = None,
                 control_wait: float | None = None) -> None:
        if not token:
            raise ValueError("the worker API needs a token")
        self.hub = hub
        self.control = control
        self.heartbeat = heartbeat
        self.hello_wait = hello_wait
        """Seconds a stream request waits for the HELLO (None: :data:`HELLO_WAIT`)."""
        self.control_wait = control_wait
        """Seconds a control request waits to be applied (None: :data:`CONTROL_WAIT`)."""
        self.closing = threading.Event()
        self._digest = token_digest(token)
        self._log = log
        self._streams = threading.BoundedSemaphore(max_streams)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        server_cls = type("_Server", (_Server,), {"address_family": family})
        self.httpd: _Server = server_cls(address, _Handler)
        self.httpd.api = self
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        """Written by :meth:`close`: the accept loop sleeps on it and the listening socket (not a poll)."""

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="kstap-worker-api", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Accept requests until :meth:`close`. The stdlib's ``serve_forever`` wakes every
        ``poll_interval`` to look for a shutdown (20 times a second at the 50 ms a prompt stop needs):
        an idle worker's largest cost. This loop sleeps until a client connects or :meth:`close` writes
        to the wake-up socket."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.httpd.fileno(), selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self.closing.is_set():
                for key, _ in selector.select():
                    if key.fileobj is not self._wake_r and not self.closing.is_set():
                        self.httpd.handle_request()  # a connection is waiting: accepted without blocking

    def close(self) -> None:
        self.closing.set()
        self.hub.wake()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.httpd.server_close()
        self._wake_r.close()
        self._wake_w.close()

    def authorized(self, headers: Any) -> bool:
        """Constant-time check of the bearer token in ``Authorization`` or ``X-Kstap-Authorization``."""
        ok = False
        for name in ("Authorization", protocol.TOKEN_HEADER):
            value = headers.get(name)
            if not isinstance(value, str) or not value.startswith("Bearer "):
                continue
            presented = token_digest(value[len("Bearer ") :].strip(" \t"))  # HTTP's whitespace, no other
            ok |= hmac.compare_digest(presented, self._digest)
        return ok

    def log(self, message: str) -> None:
        if self._log is not None:
            self._log(message)

    def stats_document(self) -> dict[str, Any]:
        hub = self.hub
        hello = hub.hello
        return protocol.sanitize_object({
            "node": hub.node, "run": hub.run, "state": hub.state, "error": hub.error,
            "interfaces": [{"name": i.name, "linktype": i.linktype, "snaplen": i.snaplen, "filter": i.filter}
                           for i in (hello.interfaces if hello else ())],
            "counters": [asdict(c) for c in hub.ifstats],
            "stats": hub.latest_stats, "stream": asdict(hub.stats()), "control": dict(self.control.current),
            "mode": hello.mode if hello else None,
        })


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    timeout = 1.0
    """What :meth:`handle_request` waits at most when the listening socket was readable but no connection is
    left to accept (the client gave up): then the accept loop goes back to sleep."""
    api: WorkerAPI

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished is normal; anything else is one line, never a traceback."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            self.api.log(f"request failed: {type(exc).__name__}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"
    """What an answer to a request line too broken to name its version uses. The stdlib's default,
    HTTP/0.9, answers such lines with a bare body and no status line."""
    server_version = "kstap-worker"
    sys_version = ""
    timeout = 30
    """Seconds a connection may stall while sending a request or receiving the stream."""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None  # the default logs every request line to stderr; we log only what matters

    def parse_request(self) -> bool:
        """The stdlib's parsing, minus HTTP/0.9 (no version, or ``HTTP/0.x``), which it would answer
        with a bare body: no status line, no headers."""
        if not super().parse_request():
            return False
        if len(self.requestline.split()) < 3:
            self.close_connection = True
            self._error(400, "HTTP/0.9 requests are not served")
            return False
        if int(self.request_version[len("HTTP/") :].split(".")[0]) < 1:
            self.request_version = "HTTP/1.0"  # so that the answer has a status line
            self.close_connection = True
            self._error(505, "HTTP/1.x only")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's error page, always with a status line: it omits the status line and headers when
        the request named ``HTTP/0.9``, which a line of more than three words does before it is refused."""
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
            self.close_connection = True
        super().send_error(code, message, explain)

    def _url(self) -> SplitResult | None:
        """The request target, split; None (after answering 400) if it cannot be parsed."""
        try:
            return urlsplit(self.path)
        except ValueError:  # e.g. "http://[x": an absolute URL with a broken IPv6 host
            self.close_connection = True
            self._error(400, "malformed request target")
            return None

    # -- plumbing -----------------------------------------------------------------------------------------
    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message}, headers)

    def _check_auth(self) -> bool:
        if self.server.api.authorized(self.headers):
            return True
        self.close_connection = True
        self._error(401, "unauthorized", {"WWW-Authenticate": 'Bearer realm="kstap-worker"'})
        return False

    # -- routes ---------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        url = self._url()
        if url is None:
            return
        path = url.path
        if path == "/healthz":
            hub = self.server.api.hub
            self._json(200 if hub.state == "capturing" else 503, {"state": hub.state, "node": hub.node})
            return
        if path not in ("/v1/stream", "/v1/stats"):
            self._error(404, "no such endpoint")
            return
        if not self._check_auth():
            return
        if path == "/v1/stats":
            self._json(200, self.server.api.stats_document())
            return
        self._stream(url.query)

    def do_POST(self) -> None:
        url = self._url()
        if url is None:
            return
        path = url.path
        if path != "/v1/control":
            self._discard_body()
            self._error(404 if path not in ("/healthz", "/v1/stream", "/v1/stats") else 405, "no such endpoint")
            return
        if not self._check_auth():
            return
        body = self._read_body()
        if body is None:
            return
        try:
            request = parse_control(body)
        except ValueError as exc:
            self._error(400, str(exc))
            return
        api = self.server.api
        try:
            wait = CONTROL_WAIT if api.control_wait is None else api.control_wait
            applied, error = api.control.submit(request, timeout=wait)
        except ControlRejected as exc:
            self._error(exc.status, exc.message)
            return
        if error is not None:
            self._error(400, error)
            return
        api.log(f"control: {_describe(request)} ({'applied' if applied else 'queued'})")
        self._json(200 if applied else 202, {"applied": applied, **{k: v for k, v in
                                                                   (("rate", request.rate), ("filter", request.filter))
                                                                   if v is not None}})

    def _method_not_allowed(self) -> None:
        self._discard_body()
        self._error(405, "method not allowed")

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    def _discard_body(self) -> None:
        self.close_connection = True

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._error(400, "send the control body with a Content-Length, not chunked")
            return None
        raw = self.headers.get("Content-Length")
        try:
            length = int(raw) if raw is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._error(400, "a Content-Length is required")
            return None
        if length > MAX_CONTROL_BODY:
            self.close_connection = True
            self._error(400, f"control body above {MAX_CONTROL_BODY} bytes")
            return None
        try:
            return self.rfile.read(length)
        except OSError:
            self.close_connection = True
            return None

    def _stream(self, query: str) -> None:
        api = self.server.api
        hub = api.hub
        try:
            params = parse_qs(query, keep_blank_values=True, max_num_fields=8, strict_parsing=bool(query))
        except ValueError:
            self._error(400, "malformed query")
            return
        after_raw = params.get("after", ["0"])
        run = params.get("run", [""])[-1]
        text = after_raw[-1]
        # ASCII digits only: int() would also take "+1", " 1", "1_0" and other scripts' digits
        after = int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else -1
        if not 0 <= after <= protocol.MAX_TS:
            self._error(400, "after must be a frame number (0 or more)")
            return
        if run != hub.run:
            after = 0  # another run (or none given): from the start of what is kept
        if after > hub.seq:
            self._error(400, "after is ahead of this worker's stream")
            return
        if not api._streams.acquire(blocking=False):
            self._error(503, "too many stream readers", {"Retry-After": "1"})
            return
        try:
            hello = hub.wait_hello(HELLO_WAIT if api.hello_wait is None else api.hello_wait)
            if hello is None:
                self._error(503, hub.error or "the capture has not started", {"Retry-After": "1"})
                return
            self._serve_stream(after, hello)
        finally:
            api._streams.release()

    def _serve_stream(self, after: int, hello: protocol.Hello) -> None:
        api = self.server.api
        hub = api.hub
        self.send_response(200)
        self.send_header("Content-Type", protocol.CONTENT_TYPE)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        self.close_connection = True
        hub.attach()
        api.log(f"stream reader attached (from frame {after})")
        try:
            self._chunk(protocol.preamble() + protocol.encode_hello(after, hello))
            done = False
            while not done and not api.closing.is_set():
                parts, after, done = hub.read(after, timeout=api.heartbeat)
                if parts:
                    self._chunk(b"".join(parts))
            if done:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except (OSError, ValueError):
            pass  # the reader went away (or timed out): it reconnects with ?after=
        finally:
            hub.detach()
            api.log("stream reader detached")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        self.wfile.flush()


def parse_control(body: bytes) -> ControlRequest:
    """A control body → request; ValueError (→ 400) naming what is wrong."""
    try:
        obj = protocol.parse_json_object(body, "control body", MAX_CONTROL_BODY)
    except protocol.ProtocolError as exc:
        raise ValueError(exc.message) from None
    unknown = sorted(set(obj) - {"rate", "filter"})
    if unknown:
        raise ValueError(f"unknown control field(s): {', '.join(unknown)} (known: rate, filter)")
    if not obj:
        raise ValueError("nothing to change: give rate and/or filter")
    rate = obj.get("rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)
                             or not math.isfinite(rate) or not 0.0 < rate <= 1.0):
        raise ValueError("rate must be a number in (0, 1]")
    expression = obj.get("filter")
    if expression is not None:
        if not isinstance(expression, str):
            raise ValueError("filter must be a string (a pcap-filter expression)")
        if len(expression) > MAX_FILTER_CHARS or "\0" in expression:
            raise ValueError(f"filter must be at most {MAX_FILTER_CHARS} characters, without NUL")
    return ControlRequest(float(rate) if rate is not None else None, expression)


def _describe(request: ControlRequest) -> str:
    parts = []
    if request.rate is not None:
        parts.append(f"rate {request.rate:g}")
    if request.filter is not None:
        parts.append(f"filter {request.filter!r}")
    return ", ".join(parts)
