"""Fuzz targets for remote capture: the worker's HTTP API and the CLI's decoder of the worker stream.

========== ========================================================= ===============================
target     what runs                                                 may raise
========== ========================================================= ===============================
worker_api any bytes as the requests of one connection, answered by   nothing
           the real ``WorkerAPI`` request handler (``http.server``
           parsing, routes, token check, ``/v1/stream`` query,
           ``/v1/control`` body and the worker's control validator)
worker_    any bytes as a worker stream, fed to ``StreamDecoder`` in  ``ProtocolError``
stream     pieces, as :mod:`kstap.remote.client` does
========== ========================================================= ===============================

``worker_api`` drives the handler on an in-memory connection (no thread, no socket): the input is
what the client sent, the output every byte the server wrote. Checked for every input: each answer
is a well-formed HTTP/1.x response (status line, headers, a body that matches its
``Content-Length`` or chunking) with a status in :data:`DOCUMENTED`; a protected route answers
anything but 401 only to a request that carries ``Bearer <token>`` exactly (and always does for
one that does); the token is in no answer; a stream body is a valid stream; afterwards no stream
slot or hub reader is left taken and a fresh request is served. The first input byte picks the
worker's state (capturing, ended, failed before its HELLO, starting) and mode (full, percentage,
auto); a stream to a capturing worker ends when the "client" stops reading (a write budget).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from kstap.config import SamplingSettings, TapSettings
from kstap.model import Interface, SourceStats
from kstap.remote import protocol, server
from kstap.remote.hub import ControlInbox, ControlRequest, StreamHub
from kstap.worker import Worker

TOKEN = "kstapfuzz0token0" + "5eed" * 12
"""The worker's token in the fuzzed API (fixed, so seeds can carry it and the fuzzer can bend it)."""
RUN = "fuzzrun000000001"
DOCUMENTED = frozenset({100, 200, 202, 400, 401, 404, 405, 409, 414, 431, 501, 503, 505})
"""Statuses the worker API may answer with (kstap/remote/server.py; 100 for ``Expect: 100-continue``)."""
PROTECTED = {"GET": ("/v1/stream", "/v1/stats"), "POST": ("/v1/control",)}
BEFORE_ROUTING = frozenset({400, 414, 431, 501, 505})
"""What may answer a protected route without a token check (the request was refused before routing)."""
WRITE_BUDGET = 48
"""Writes the in-memory client accepts before it "goes away" (ends a live stream)."""
STATES = ("capturing", "ended", "failed", "starting")
MODES = ("full", "percentage", "auto")


class ClientGone(BrokenPipeError):
    """The in-memory client stopped reading (what a real reader that disconnects causes)."""


class _Conn:
    """The server's side of a connection: reads ``request``, collects what is written."""

    def __init__(self, request: bytes, budget: int = WRITE_BUDGET) -> None:
        self._rfile = io.BytesIO(request)
        self.out = bytearray()
        self.budget = budget
        self.gone = False

    def makefile(self, mode: str, bufsize: int = -1) -> io.BytesIO:
        assert "r" in mode, mode  # the handler writes unbuffered, through sendall
        return self._rfile

    def settimeout(self, value: float | None) -> None:
        return None

    def setsockopt(self, *args: object) -> None:
        return None

    def fileno(self) -> int:
        return -1

    def sendall(self, data: bytes) -> None:
        if self.budget <= 0:
            self.gone = True
            raise ClientGone(32, "the fuzz client stopped reading")
        self.budget -= 1
        self.out += data

    def close(self) -> None:
        return None


@dataclass
class Answer:
    """One response as the handler began it, with what it knew about the request then."""

    code: int
    command: str
    path: str
    request_line: bytes
    auth_checked: bool | None
    expected_auth: bool


def _route(path: str) -> str | None:
    try:
        return urlsplit(path).path
    except ValueError:
        return None


def exact_token(headers: Any) -> bool:
    """The oracle: the (first) Authorization or X-Kstap-Authorization value is ``Bearer <token>``
    (RFC 6750: ``"Bearer" 1*SP token``; the worker also takes tabs after the space, and spaces and
    tabs around the field value are not part of it). No other character may come near the token."""
    if headers is None:
        return False
    for name in ("Authorization", protocol.TOKEN_HEADER):
        value = headers.get(name)
        if isinstance(value, str) and _EXACT.fullmatch(value):
            return True
    return False


_EXACT = re.compile(rf"[ \t]*Bearer [ \t]*{TOKEN}[ \t]*")


class _Observed(server._Handler):
    """The real handler, with every response recorded (nothing it does is changed)."""

    answers: list[Answer]

    def handle_one_request(self) -> None:
        self._auth: bool | None = None
        self.headers = None  # type: ignore[assignment]
        super().handle_one_request()

    def _check_auth(self) -> bool:
        self._auth = self.server.api.authorized(self.headers)  # recorded before the answer is sent
        return super()._check_auth()

    def send_response_only(self, code: int, message: str | None = None) -> None:
        self.answers.append(Answer(int(code), self.command or "", getattr(self, "path", "") or "",
                                   getattr(self, "raw_requestline", b""), getattr(self, "_auth", None),
                                   exact_token(getattr(self, "headers", None))))
        super().send_response_only(code, message)


_API: server.WorkerAPI | None = None


def worker_api_instance() -> server.WorkerAPI:
    """One WorkerAPI per process, bound to 127.0.0.1 but never started (the handler is called directly)."""
    global _API
    if _API is None:
        hub = StreamHub("fuzz-node")
        _API = server.WorkerAPI(("127.0.0.1", 0), TOKEN, hub, ControlInbox(), heartbeat=0.0, hello_wait=0.0,
                                control_wait=0.0, max_streams=2)
    return _API


def make_hub(state: str) -> StreamHub:
    hub = StreamHub("fuzz-node", backlog_bytes=4096)
    hub.run = RUN
    if state in ("capturing", "ended"):
        hub.set_hello([Interface("veth0"), Interface("veth1", 113, 96, "tcp")], comment="kstap: run mode=full",
                      mode="full")
        hub.state = "capturing"
        frame = b"\x02" * 60
        hub.publish_batch(10**18, [(10**18 + i, 60, 60, frame, i % 2, 0) for i in range(3)], {1: "note"})
        hub.publish_ifstats([SourceStats(5, 1, 3), SourceStats(0, 0, 0)])
        hub.publish_event("alert", {"level": "warn", "kind": "drops", "message": "m"})
        if state == "ended":
            hub.end("duration", {"captured": 3})
    elif state == "failed":
        hub.end("error", {}, error="no such interface")
    return hub


def validator(mode: str) -> Any:
    """The real worker's control validator (:meth:`kstap.worker.Worker._validate`) for a worker in ``mode``."""
    tap = TapSettings(interfaces=["veth0"], sampling=SamplingSettings(mode=mode))
    fake = SimpleNamespace(settings=SimpleNamespace(tap=tap))

    def validate(request: ControlRequest) -> None:
        Worker._validate(fake, request)  # type: ignore[arg-type]

    return validate


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")


def parse_answers(out: bytes, answers: Sequence[Answer], gone: bool) -> list[tuple[int, str, bytes]]:
    """Split the bytes written into responses (status, content type, body); each must be well-formed.

    Only the last may be cut short, and only when the client went away while it was written.
    """
    pos = 0
    got: list[tuple[int, str, bytes]] = []
    for i, answer in enumerate(answers):
        last = i == len(answers) - 1
        m = _STATUS.match(out, pos)
        if m is None:
            assert gone and last and _STATUS.match(out[pos:] + b"x" * 64) is None and len(out) - pos < 64, \
                f"no status line at {pos}: {bytes(out[pos:pos + 80])!r}"
            break
        code = int(m.group(1))
        assert code == answer.code, (code, answer)
        end = out.find(b"\r\n\r\n", m.end() - 2)
        if end < 0:
            assert gone and last, "headers cut short"
            break
        head = bytes(out[m.end() : end])
        pos = end + 4
        fields: dict[str, str] = {}
        for line in head.split(b"\r\n") if head else []:
            name, sep, value = line.partition(b":")
            assert sep and name and name == name.strip(), f"bad header line {line!r}"
            fields[name.decode("latin-1").lower()] = value.decode("latin-1").strip()
        ctype = fields.get("content-type", "")
        if code < 200 or answer.command == "HEAD":
            got.append((code, ctype, b""))
            continue
        if fields.get("transfer-encoding") == "chunked":
            body = bytearray()
            while True:
                nl = out.find(b"\r\n", pos)
                if nl < 0:
                    assert gone and last, "chunk size cut short"
                    break
                size = int(out[pos:nl], 16)
                if size == 0:
                    assert out[nl + 2 : nl + 4] == b"\r\n" or (gone and last)
                    pos = nl + 4
                    break
                if nl + 2 + size + 2 > len(out):
                    assert gone and last, "chunk cut short"
                    pos = len(out)
                    break
                body += out[nl + 2 : nl + 2 + size]
                assert out[nl + 2 + size : nl + 4 + size] == b"\r\n"
                pos = nl + 4 + size
            got.append((code, ctype, bytes(body)))
            continue
        length = int(fields.get("content-length", "0"))
        body = bytes(out[pos : pos + length])
        assert len(body) == length or (gone and last), "body cut short"
        pos += length
        got.append((code, ctype, body))
    else:
        assert pos == len(out), f"{len(out) - pos} bytes after the last response: {bytes(out[pos:pos + 80])!r}"
    return got


def run_worker_api(request: bytes, state: str = "ended", mode: str = "percentage") -> list[tuple[int, str, bytes]]:
    """Serve ``request`` (the bytes of one connection) and check every answer; returns (status, body) pairs."""
    api = worker_api_instance()
    api.hub = make_hub(state)
    api.control = ControlInbox(validator(mode))
    conn = _Conn(request)
    answers: list[Answer] = []
    _Observed.answers = answers
    with contextlib.suppress(ClientGone):  # the real server's handle_error ignores a client that went away
        _Observed(conn, ("127.0.0.1", 40000), api.httpd)  # type: ignore[arg-type]
    out = bytes(conn.out)
    got = parse_answers(out, answers, conn.gone)
    request_lines = b"".join(a.request_line for a in answers)
    assert TOKEN.encode() not in out or TOKEN.encode() in request_lines, "the token is in an answer"
    for a in answers:
        assert a.code in DOCUMENTED, f"undocumented status {a.code} for {a.command} {a.path!r}"
        route = _route(a.path)
        if a.code == 100:
            continue
        if a.command in PROTECTED and route in PROTECTED[a.command] and a.code not in BEFORE_ROUTING:
            assert a.auth_checked is not None, f"{a.code} for {a.command} {route} without a token check"
            assert a.auth_checked == a.expected_auth, \
                f"token check said {a.auth_checked}, the request {'has' if a.expected_auth else 'lacks'} it"
            assert a.code == 401 or a.auth_checked
    for (code, ctype, body), a in zip(got, [a for a in answers if a.code >= 100], strict=False):
        if ctype == protocol.CONTENT_TYPE:
            assert code == 200 and _route(a.path) == "/v1/stream"
            frames = protocol.StreamDecoder().feed(body)
            assert frames and isinstance(frames[0].body, protocol.Hello), "a stream must start with HELLO"
        elif ctype == "application/json" and a.command != "HEAD":
            assert isinstance(json.loads(body), dict)  # the API's own answers are JSON objects
    # nothing left taken, and the next client is served
    assert api._streams.acquire(blocking=False)
    api._streams.release()
    assert api.hub.stats().readers == 0
    after = _Conn(f"GET /v1/stats HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    _Observed.answers = []
    _Observed(after, ("127.0.0.1", 40001), api.httpd)  # type: ignore[arg-type]
    assert bytes(after.out).startswith(b"HTTP/1.1 200 "), bytes(after.out[:80])
    return got


def worker_api(data: bytes) -> None:
    """First byte: bits 0-1 the worker's state, bits 2-3 its mode; the rest is what the client sends."""
    if not data:
        return
    run_worker_api(data[1:], STATES[data[0] & 3], MODES[(data[0] >> 2) % 3])


# -- the worker stream, as the CLI decodes it ---------------------------------------------------------------
def _utf8(value: Any) -> None:
    """Every string a frame carries can be written out (pcapng comments, NDJSON, stderr)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            _utf8(k)
            _utf8(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _utf8(v)


def check_frame(frame: protocol.Frame, hello: protocol.Hello | None) -> None:
    """What the CLI does with a frame must work: its strings encode, encoding it again gives it back."""
    body = frame.body
    assert 0 <= frame.seq <= protocol.MAX_TS
    if isinstance(body, protocol.Hello):
        _utf8([body.node, body.run, body.comment, body.mode, body.seed_id])
        for i in body.interfaces:
            _utf8([i.name, i.filter])
    elif isinstance(body, protocol.Batch):
        for ts, caplen, origlen, data, _ifid, _w in body.records:
            assert caplen == len(data) <= origlen and 0 <= ts <= protocol.MAX_TS
        _utf8(body.comments)
    elif isinstance(body, protocol.Event | protocol.End):
        _utf8(body.__dict__)
    elif isinstance(body, protocol.Entries):
        _utf8(body.items)
    again = protocol.StreamDecoder(max_payload=protocol.MAX_PAYLOAD)
    data = protocol.preamble()
    if not isinstance(body, protocol.Hello):
        assert hello is not None
        data += protocol.encode(0, hello)
    assert again.feed(data + protocol.encode(frame.seq, body))[-1] == frame


def run_worker_stream(pieces: Sequence[bytes]) -> list[protocol.Frame]:
    """Feed ``pieces`` in order; only ProtocolError may escape, and the outcome must not depend on the cuts."""
    decoder = protocol.StreamDecoder(max_payload=1 << 20)
    frames: list[protocol.Frame] = []
    failed = False
    hello = None
    for piece in pieces:
        try:
            got = decoder.feed(piece)
        except protocol.ProtocolError as exc:
            assert exc.message and "\n" not in exc.message, exc.message
            failed = True
            break
        for frame in got:
            if isinstance(frame.body, protocol.Hello):
                hello = frame.body
            check_frame(frame, hello)
        frames += got
    if failed:
        try:
            decoder.feed(b"")
        except protocol.ProtocolError:
            pass
        else:
            raise AssertionError("a failed decoder accepted more bytes")
    whole = protocol.StreamDecoder(max_payload=1 << 20)
    try:
        same = whole.feed(b"".join(pieces))
    except protocol.ProtocolError:
        assert failed, "the whole stream fails, the same bytes in pieces do not"
        return frames
    assert not failed, "the pieces fail, the whole stream does not"
    assert same == frames, "the frames depend on where the stream was cut"
    assert whole.buffered == decoder.buffered
    return frames


def worker_stream(data: bytes) -> None:
    """First byte: cut the rest into pieces of that many bytes (0: one piece); a valid preamble is
    prepended when the second byte is odd, so the fuzzer spends its time on frames."""
    if len(data) < 2:
        return
    step = data[0]
    body = (protocol.preamble() if data[1] & 1 else b"") + data[2:]
    pieces = [body[i : i + step] for i in range(0, len(body), step)] if step else [body]
    run_worker_stream(pieces)


TARGETS = {"worker_api": worker_api, "worker_stream": worker_stream}
