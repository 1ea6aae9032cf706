"""Which protocol a TCP connection speaks, judged by its first client bytes (ports only break ties).

- HTTP/1.x: a request line ``METHOD SP target SP HTTP/1.x CRLF`` (or a bare LF) (an h2c ``Upgrade`` is HTTP/1 until
  the server's ``101``; :mod:`kstap.dissect.http1` hands over then).
- HTTP/2 with prior knowledge: the client preface ``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n``.
- DNS over TCP: a 2-byte length, then a plausible query header (QR=0, standard opcode, one question).
- Anything else is ``unknown``: the stage stops dissecting the flow and frees its buffers.

HTTP/2 is dissected by :class:`kstap.dissect.http2.Http2Parser`, imported lazily; without it a
flow is ``unsupported`` (counted, not dissected).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kstap.dissect.api import FlowContext, StreamParser

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DETECT_LIMIT = 8192
"""Client bytes looked at before a flow is declared unknown (a request line longer than this is rare)."""

NEED_MORE = "need-more"
UNKNOWN = "unknown"
UNSUPPORTED = "unsupported"

_METHOD_PREFIX = re.compile(rb"[A-Z][A-Z0-9_-]{0,31}\Z")
_REQUEST_LINE = re.compile(rb"[A-Z][A-Z0-9_-]{0,31} [\x21-\x7e]+ HTTP/1\.[01]\Z")
_PARTIAL_LINE = re.compile(rb"[A-Z][A-Z0-9_-]{0,31} [\x21-\x7e]*(?: ([\x21-\x7e]*))?\Z")

ParserFactory = Callable[[FlowContext], StreamParser]


@dataclass(frozen=True)
class Detection:
    """The verdict on a connection's first client bytes."""

    protocol: str
    """"http/1", "http/2", "dns", or NEED_MORE / UNKNOWN / UNSUPPORTED."""
    factory: ParserFactory | None = None


_H2: list[Any] = []


def http2_parser_class() -> Any | None:
    """``kstap.dissect.http2.Http2Parser`` if that module is present and imports, else None."""
    if not _H2:
        try:
            _H2.append(importlib.import_module("kstap.dissect.http2").Http2Parser)
        except (ImportError, AttributeError):
            _H2.append(None)
    return _H2[0]


def http1_request(data: bytes) -> bool | None:
    """True: starts with an HTTP/1 request line; False: cannot; None: too short to tell."""
    pos = 0
    while data.startswith(b"\r\n", pos) or data.startswith(b"\n", pos):
        pos += 2 if data[pos] == 13 else 1
    head = data[pos : pos + DETECT_LIMIT]
    end = head.find(b"\n")  # the line may end in a bare LF (RFC 9112 §2.2)
    if end > 0 and head[end - 1] == 13:
        end -= 1
    if end < 0:
        if len(head) >= DETECT_LIMIT:
            return False
        sp = head.find(b" ")
        if sp < 0:
            return None if _METHOD_PREFIX.match(head) or not head else False
        m = _PARTIAL_LINE.match(head)
        if m is None:
            return False
        version = m.group(1)  # what follows the target so far must be the start of HTTP/1.x
        return None if version is None or b"HTTP/1.1".startswith(version) or b"HTTP/1.0".startswith(version) \
            else False
    return bool(_REQUEST_LINE.match(head[:end]))


def http1_response(data: bytes) -> bool:
    """The bytes start with an HTTP/1 status line (used to tell the server side mid-stream)."""
    return len(data) >= 12 and data.startswith(b"HTTP/1.") and data[8:9] == b" " and data[9:12].isdigit()


def dns_tcp_query(data: bytes) -> bool | None:
    """A DNS-over-TCP message whose header is a plausible query; None when under 14 bytes."""
    if len(data) < 14:
        return None
    length = (data[0] << 8) | data[1]
    flags = (data[4] << 8) | data[5]
    qd, an = (data[6] << 8) | data[7], (data[8] << 8) | data[9]
    opcode = (flags >> 11) & 0xF
    ok = length >= 17 and not flags & 0x8000 and opcode in (0, 1, 2, 4, 5) and qd == 1 and (an == 0 or opcode == 5)
    if ok and len(data) > 14:
        ok = data[14] <= 63  # the first label's length (0: the root)
    return ok


def detect_client(data: bytes) -> Detection:
    """Classify a connection by the first bytes its client sent (bytes in order, possibly partial)."""
    if not data:
        return Detection(NEED_MORE)
    n = min(len(data), len(PREFACE))
    if data[:n] == PREFACE[:n]:
        if n < len(PREFACE):
            return Detection(NEED_MORE)
        cls = http2_parser_class()
        return Detection("http/2", cls) if cls is not None else Detection(UNSUPPORTED)
    verdict = http1_request(data)
    if verdict:
        from kstap.dissect.http1 import Http1Parser

        return Detection("http/1", Http1Parser)
    dns = dns_tcp_query(data)
    if dns:
        from kstap.dissect.dns import DnsTcpParser

        return Detection("dns", DnsTcpParser)
    if verdict is None or dns is None:
        return Detection(NEED_MORE if len(data) < DETECT_LIMIT else UNKNOWN)
    return Detection(UNKNOWN)


def request_like(data: bytes) -> bool:
    """Could these be the first bytes of a client's request (used to pick the client mid-stream)?"""
    if data.startswith(PREFACE[: min(len(data), len(PREFACE))]) and len(data) >= 4:
        return True
    return bool(http1_request(data)) or bool(dns_tcp_query(data))
