"""What dissectors share: the entry they produce, the flow they are told about, the parser protocol.

A stream parser is created per TCP connection once its protocol is known, as ``Parser(flow)``.
The reassembler hands it bytes in order per direction (0 = client→server, 1 = server→client),
tells it about missing bytes (:meth:`StreamParser.gap`) and about the end (:meth:`StreamParser.close`).
A parser raises :class:`ParserError` on hostile or malformed input; the stage then marks the flow
and stops dissecting it (capture goes on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from json.encoder import encode_basestring
from operator import attrgetter
from typing import Protocol

from kstap.sampling.flowkey import FlowKey

SCHEMA = 1
"""The entry schema version, written into every NDJSON object as ``"schema"``."""

CLIENT_TO_SERVER = 0
SERVER_TO_CLIENT = 1


@dataclass
class Entry:
    """One request/response pair or DNS transaction; serialised to one NDJSON object."""

    time: float
    """Epoch seconds of the request's first packet."""
    flow_id: str
    """:func:`kstap.sampling.flowhash.flow_id` of the flow (the id the sampler uses)."""
    protocol: str
    """"http/1.1", "http/1.0", "http/2", "grpc", "dns"."""
    client: str
    """"ip:port", or "[ip6]:port"."""
    server: str
    method: str | None = None
    path: str | None = None
    authority: str | None = None
    status: int | None = None
    grpc_status: int | None = None
    grpc_message: str | None = None
    query_name: str | None = None
    query_type: str | None = None
    rcode: str | None = None
    answers: int | None = None
    request_bytes: int = 0
    """Bytes of the request on the wire at the application layer (headers + body)."""
    response_bytes: int = 0
    latency_ms: float | None = None
    """From the request's first packet to the response's last (None without a response)."""
    messages: int | None = None
    """gRPC messages in both directions."""
    transport: str | None = None
    """"udp" or "tcp" for DNS."""
    error: str | None = None
    """Why the exchange is incomplete: "gap", "malformed", "evicted", "no-response", …"""
    resynced: bool | None = None
    """True on exchanges that began after the parser resynchronised from a gap on the connection:
    complete as seen, but their pairing follows a guess about what the gap held."""

    def to_json(self) -> dict[str, object]:
        """The NDJSON object: None fields dropped, ``"schema": 1`` added."""
        out: dict[str, object] = {"schema": SCHEMA}
        for f in _FIELDS:
            value = getattr(self, f)
            if value is not None:
                out[f] = value
        return out

    def to_line(self) -> str:
        """The NDJSON line (without its newline): exactly ``json.dumps(self.to_json(), ensure_ascii=False,
        separators=(",", ":"))``, written field by field (the entries writer's hot path: ~2x faster)."""
        parts = [_OPEN]
        for key, value in zip(_KEYS, _values(self), strict=True):
            if value is None:
                continue
            kind = type(value)
            if kind is str:
                parts += (key, encode_basestring(value))
            elif kind is int or (kind is float and value - value == 0):  # NaN, infinities: json's to spell
                parts += (key, repr(value))
            elif kind is bool:
                parts += (key, "true" if value else "false")
            else:
                return _DUMPS(self.to_json())
        parts.append("}")
        return "".join(parts)


_FIELDS = tuple(f.name for f in fields(Entry))
_OPEN = f'{{"schema":{SCHEMA}'
_KEYS = tuple(f',"{name}":' for name in _FIELDS)
_values = attrgetter(*_FIELDS)
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True)
class FlowContext:
    """What a parser knows about its connection."""

    flow_id: str
    client: str
    """"ip:port" of the side that opened the connection (or was judged to, mid-stream)."""
    server: str
    key: FlowKey
    midstream: bool = False
    """True when capture began after the connection opened (no SYN seen): the first bytes a
    parser gets are a request start chosen by the stage, but earlier state (HPACK tables,
    responses to unseen requests) is unknown."""


class StreamParser(Protocol):
    """One per TCP connection once the protocol is detected; constructed as ``Parser(flow)``."""

    def feed(self, direction: int, data: bytes, ts_ns: int) -> list[Entry]:
        """Bytes of ``direction`` (0 client→server, 1 server→client), in order; complete exchanges out."""
        ...

    def gap(self, direction: int, nbytes: int, ts_ns: int) -> list[Entry]:
        """``nbytes`` of ``direction`` are missing (never captured): resynchronise or give up."""
        ...

    def close(self, ts_ns: int) -> list[Entry]:
        """The connection ended or was evicted: flush what is pending (marked with ``error``)."""
        ...

    @property
    def memory(self) -> int:
        """Bytes this parser holds (buffers, HPACK tables, pending requests), estimated honestly."""
        ...


class ParserError(Exception):
    """Hostile or malformed input: the stage marks the flow and stops dissecting it."""

    def __init__(self, message: str, kind: str = "malformed") -> None:
        super().__init__(message)
        self.kind = kind
        """The error counter this goes to: "malformed", "too-large", "header-flood", …"""


def endpoint(addr: bytes, port: int) -> str:
    """"ip:port", or "[ip6]:port"."""
    import ipaddress

    ip = ipaddress.ip_address(addr)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
