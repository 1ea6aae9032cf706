"""The worker stream's wire format: versioned frames, parsed strictly (the bytes are untrusted).

A stream (the body of ``GET /v1/stream``) is a preamble, then frames::

    preamble   "KSTP" u16 version u16 reserved(0)                         8 bytes, little-endian
    frame      u8 type  u8 flags(0)  u16 reserved(0)  u32 length  u64 seq  then `length` bytes

``seq`` numbers the frames a worker has produced (1, 2, …); a client that reconnects asks for the
frames after the last one it saw. Heartbeats repeat the last ``seq``. Frame types:

============  ==========================================================================================
HELLO    1    JSON: node, run id, interfaces (name, linktype, snaplen, filter), the run's settings.
              Always the first frame of a stream; a later HELLO of the same run may add interfaces.
BATCH    2    binary: u64 watermark, u32 count, then per packet ``u64 ts_ns, u32 caplen, u32 origlen,
              u16 if_id, u16 comment_len``, the captured bytes and the UTF-8 comment. The watermark
              promises that no later packet of this stream has a timestamp below it. A BATCH with no
              packets is a heartbeat.
IFSTATS  3    JSON: ``{"interfaces": [[received, dropped, delivered], …]}``, one per HELLO interface.
EVENT    4    JSON: ``{"kind": …, "data": {…}}``; kinds in :data:`EVENT_KINDS` (stats snapshots,
              alerts, rate changes, warnings, …).
ENTRIES  5    NDJSON: dissected request/response entries, one JSON object per line.
GAP      6    JSON: ``{"frames": n, "packets_before": m}``: the client fell behind the worker's backlog;
              n frames are gone, and the worker had produced m packets before the first frame kept.
END      7    JSON: ``{"reason": …, "summary": {…}}``: the capture is over; nothing follows.
============  ==========================================================================================

Every size is bounded (:data:`MAX_PAYLOAD`, :data:`MAX_JSON`, :data:`MAX_RECORDS`, …) and every
field is checked; :class:`StreamDecoder` raises :class:`ProtocolError` and nothing else on bad
input, and never buffers more than one frame plus the bytes it was last fed.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from kstap.errors import WorkerFailure
from kstap.model import Interface, PacketRecord, SourceStats
from kstap.vocabulary import AlertLevel

VERSION = 1
MAGIC = b"KSTP"
CONTENT_TYPE = "application/vnd.kstap.stream; version=1"
TOKEN_HEADER = "X-Kstap-Authorization"
"""Carries ``Bearer <token>`` where ``Authorization`` cannot: the Kubernetes API server consumes
(and removes) the ``Authorization`` header of a request it proxies to a pod."""

PREAMBLE = struct.Struct("<4sHH")
HEADER = struct.Struct("<BBHIQ")
BATCH_HEAD = struct.Struct("<QI")
RECORD = struct.Struct("<QIIHH")

MAX_PAYLOAD = 8 << 20
"""Largest frame body (bytes). A batch is split before it gets there."""
BATCH_TARGET = 1 << 20
"""Senders cut batches at about this many bytes: small enough to interleave workers smoothly."""
MAX_JSON = 1 << 20
"""Largest JSON (or NDJSON) frame body."""
MAX_RECORDS = 1 << 17
MAX_SNAPLEN = 262144
MAX_COMMENT = 0xFFFF
MAX_INTERFACES = 256
MAX_NAME = 253
MAX_TEXT = 4096
MAX_FILTER = 65536
MAX_TS = (1 << 63) - 1
MAX_COUNTER = (1 << 64) - 1
EVENT_KINDS = ("listening", "stats", "rate_change", "alert", "warning", "control")
ALERT_LEVELS = tuple(level.value for level in AlertLevel)


class ProtocolError(WorkerFailure):
    """A worker sent bytes that are not a valid kstap stream (or an unsupported version)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint or "the worker may run another kstap version: give --worker-image the "
                                          "image of this kstap (kstap --version)")


class FrameType(IntEnum):
    HELLO = 1
    BATCH = 2
    IFSTATS = 3
    EVENT = 4
    ENTRIES = 5
    GAP = 6
    END = 7


# -- what frames carry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hello:
    node: str
    run: str
    """Random id of the worker process's run: a new one means the worker restarted."""
    interfaces: tuple[Interface, ...]
    comment: str = ""
    """The run note (``kstap: run mode=… rate=… seed=… filter=…``) for the section header."""
    mode: str = "full"
    rate: float = 1.0
    seed_id: str = ""
    started_ns: int = 0


@dataclass
class Batch:
    watermark: int
    records: list[PacketRecord]
    comments: dict[int, str] = field(default_factory=dict)
    """Packet comments keyed by index in ``records``."""


@dataclass(frozen=True)
class IfStats:
    counters: tuple[SourceStats, ...]


@dataclass(frozen=True)
class Event:
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Entries:
    items: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Gap:
    frames: int
    packets_before: int


@dataclass(frozen=True)
class End:
    reason: str
    summary: dict[str, Any]


Body = Hello | Batch | IfStats | Event | Entries | Gap | End


@dataclass(frozen=True)
class Frame:
    seq: int
    body: Body


# -- encoding --------------------------------------------------------------------------------------------
def preamble() -> bytes:
    return PREAMBLE.pack(MAGIC, VERSION, 0)


def _frame(kind: FrameType, seq: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame of {len(payload)} bytes is above the {MAX_PAYLOAD}-byte limit")
    return HEADER.pack(kind, 0, 0, len(payload), seq) + payload


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(sanitize(obj), separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sanitize(value: Any) -> Any:
    """JSON-ready copy: NaN/inf become None, tuples lists, unknown objects their str()."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sanitize(v) for v in value]
    return str(value)


def sanitize_object(value: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`sanitize` for a mapping, typed as one."""
    return {str(k): sanitize(v) for k, v in value.items()}


def encode_hello(seq: int, hello: Hello) -> bytes:
    obj = {"version": VERSION, "node": hello.node, "run": hello.run, "comment": hello.comment,
           "mode": hello.mode, "rate": hello.rate, "seed_id": hello.seed_id, "started_ns": hello.started_ns,
           "interfaces": [{"name": i.name, "linktype": i.linktype, "snaplen": i.snaplen, "filter": i.filter}
                          for i in hello.interfaces]}
    return _frame(FrameType.HELLO, seq, _dumps(obj))


def encode_batch(seq: int, watermark: int, records: Sequence[PacketRecord],
                 comments: Mapping[int, str] | None = None) -> bytes:
    """One BATCH frame (the caller keeps it under :data:`MAX_PAYLOAD`, see :func:`batch_cuts`)."""
    parts: list[bytes] = [b"", BATCH_HEAD.pack(watermark, len(records))]
    append = parts.append
    pack = RECORD.pack
    size = BATCH_HEAD.size
    for i, (ts, caplen, origlen, data, ifid, _worker) in enumerate(records):
        note = comments.get(i) if comments else None
        raw = _comment_bytes(note) if note else b""
        append(pack(ts, caplen, origlen, ifid, len(raw)))
        append(data)
        size += RECORD.size + caplen
        if raw:
            append(raw)
            size += len(raw)
    if size > MAX_PAYLOAD:
        raise ValueError(f"batch of {size} bytes is above the {MAX_PAYLOAD}-byte limit")
    parts[0] = HEADER.pack(FrameType.BATCH, 0, 0, size, seq)
    return b"".join(parts)


def encode_batch_body(seq: int, body: bytes) -> bytes:
    """One BATCH frame around a body made elsewhere (``BATCH_HEAD`` and its records, as the C helper's
    ``epb_batch`` writes them); the same size limit as :func:`encode_batch`."""
    return _frame(FrameType.BATCH, seq, body)


def _comment_bytes(note: str) -> bytes:
    raw = note.encode()
    if len(raw) > MAX_COMMENT:  # cut at a character boundary
        raw = raw[:MAX_COMMENT].decode("utf-8", "ignore").encode()
    return raw


def batch_cuts(records: Sequence[PacketRecord], target: int = BATCH_TARGET) -> list[tuple[int, int]]:
    """(start, end) runs of ``records`` whose frames stay near ``target`` bytes (one record at least)."""
    cuts: list[tuple[int, int]] = []
    start, size = 0, BATCH_HEAD.size
    for i, rec in enumerate(records):
        cost = RECORD.size + rec[1] + 256  # room for a comment
        if size + cost > target and i > start:
            cuts.append((start, i))
            start, size = i, BATCH_HEAD.size
        size += cost
    if start < len(records) or not records:
        cuts.append((start, len(records)))
    return cuts


def encode_ifstats(seq: int, counters: Sequence[SourceStats]) -> bytes:
    rows = [[c.received, c.dropped, c.delivered] for c in counters]
    return _frame(FrameType.IFSTATS, seq, _dumps({"interfaces": rows}))


def encode_event(seq: int, kind: str, data: Mapping[str, Any]) -> bytes:
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return _frame(FrameType.EVENT, seq, _dumps({"kind": kind, "data": data}))


def encode_entries(seq: int, lines: Sequence[str]) -> bytes:
    """``lines`` are JSON objects already serialised (one per line, no newline inside)."""
    return _frame(FrameType.ENTRIES, seq, ("\n".join(lines) + "\n").encode())


def encode_gap(seq: int, frames: int, packets_before: int) -> bytes:
    return _frame(FrameType.GAP, seq, _dumps({"frames": frames, "packets_before": packets_before}))


def encode_end(seq: int, reason: str, summary: Mapping[str, Any]) -> bytes:
    return _frame(FrameType.END, seq, _dumps({"reason": reason, "summary": summary}))


# -- decoding --------------------------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""A ``\\uD800``-``\\uDFFF`` escape: JSON may spell half a UTF-16 pair, which is no character."""


def parse_json_object(payload: bytes, what: str, limit: int = MAX_JSON) -> dict[str, Any]:
    """A JSON object from untrusted bytes, or :class:`ProtocolError` (never another exception).

    Every string in it is valid Unicode: a lone surrogate escape (``"\\udc80"``) is refused, as it
    would make whatever writes the string out (a pcapng comment, a filter, NDJSON) fail later.
    """
    if len(payload) > limit:
        raise ProtocolError(f"{what}: {len(payload)} bytes is above the {limit}-byte limit")
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what}: not valid JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what}: expected a JSON object")
    if _SURROGATE_ESCAPE.search(payload):  # rare: only then look at every string
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(f"{what}: a string holds a lone surrogate (not Unicode text)") from None
        except RecursionError:
            raise ProtocolError(f"{what}: nested too deeply") from None
    return obj


def get_str(obj: Mapping[str, Any], key: str, what: str, *, limit: int = MAX_TEXT,
            default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise ProtocolError(f"{what}: {key!r} must be a string")
    if len(value) > limit:
        raise ProtocolError(f"{what}: {key!r} is longer than {limit} characters")
    return value


def get_int(obj: Mapping[str, Any], key: str, what: str, *, lo: int = 0, hi: int = MAX_COUNTER,
            default: int | None = None) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(f"{what}: {key!r} must be an integer in [{lo}, {hi}]")
    return value


def get_float(obj: Mapping[str, Any], key: str, what: str, *, lo: float = 0.0, hi: float = 1.0,
              default: float | None = None) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ProtocolError(f"{what}: {key!r} must be a number in [{lo}, {hi}]")
    return float(value)


def _counter(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNTER:
        raise ProtocolError(f"{what}: counters must be non-negative integers")
    return value


def parse_hello(payload: bytes) -> Hello:
    what = "HELLO"
    obj = parse_json_object(payload, what)
    version = get_int(obj, "version", what, hi=0xFFFF)
    if version != VERSION:
        raise ProtocolError(f"the worker speaks stream version {version}; this kstap speaks {VERSION}")
    raw_ifaces = obj.get("interfaces")
    if not isinstance(raw_ifaces, list) or not 1 <= len(raw_ifaces) <= MAX_INTERFACES:
        raise ProtocolError(f"{what}: 'interfaces' must be a list of 1 to {MAX_INTERFACES} objects")
    ifaces = []
    for item in raw_ifaces:
        if not isinstance(item, dict):
            raise ProtocolError(f"{what}: each interface must be an object")
        name = get_str(item, "name", what, limit=64)
        if not name:
            raise ProtocolError(f"{what}: an interface has an empty name")
        ifaces.append(Interface(name, get_int(item, "linktype", what, hi=0xFFFF),
                                get_int(item, "snaplen", what, lo=1, hi=MAX_SNAPLEN),
                                get_str(item, "filter", what, limit=MAX_FILTER, default="")))
    node = get_str(obj, "node", what, limit=MAX_NAME)
    run = get_str(obj, "run", what, limit=64)
    if not node or not run:
        raise ProtocolError(f"{what}: 'node' and 'run' must not be empty")
    return Hello(node=node, run=run, interfaces=tuple(ifaces),
                 comment=get_str(obj, "comment", what, limit=MAX_FILTER + MAX_TEXT, default=""),
                 mode=get_str(obj, "mode", what, limit=16, default="full"),
                 rate=get_float(obj, "rate", what, default=1.0),
                 seed_id=get_str(obj, "seed_id", what, limit=64, default=""),
                 started_ns=get_int(obj, "started_ns", what, hi=MAX_TS, default=0))


def parse_batch(payload: bytes, n_interfaces: int) -> Batch:
    """A BATCH body; every record's lengths and interface id are checked against the HELLO."""
    size = len(payload)
    if size < BATCH_HEAD.size:
        raise ProtocolError("BATCH: truncated header")
    watermark, count = BATCH_HEAD.unpack_from(payload, 0)
    if watermark > MAX_TS:
        raise ProtocolError("BATCH: watermark out of range")
    if count > MAX_RECORDS:
        raise ProtocolError(f"BATCH: {count} records is above the limit of {MAX_RECORDS}")
    pos = BATCH_HEAD.size
    records: list[PacketRecord] = []
    comments: dict[int, str] = {}
    unpack = RECORD.unpack_from
    rsize = RECORD.size
    for i in range(count):
        if pos + rsize > size:
            raise ProtocolError("BATCH: truncated record header")
        ts, caplen, origlen, ifid, clen = unpack(payload, pos)
        pos += rsize
        if ts > MAX_TS:
            raise ProtocolError("BATCH: timestamp out of range")
        if caplen > MAX_SNAPLEN or caplen > origlen:
            raise ProtocolError(f"BATCH: bad lengths (captured {caplen}, original {origlen})")
        if ifid >= n_interfaces:
            raise ProtocolError(f"BATCH: interface id {ifid} but the worker described {n_interfaces}")
        end = pos + caplen
        if end + clen > size:
            raise ProtocolError("BATCH: truncated record")
        data = payload[pos:end]
        if clen:
            try:
                comments[i] = payload[end : end + clen].decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError("BATCH: a packet comment is not UTF-8") from None
        pos = end + clen
        records.append((ts, caplen, origlen, data, ifid, 0))
    if pos != size:
        raise ProtocolError(f"BATCH: {size - pos} bytes after the last record")
    return Batch(watermark, records, comments)


def parse_ifstats(payload: bytes, n_interfaces: int) -> IfStats:
    obj = parse_json_object(payload, "IFSTATS")
    rows = obj.get("interfaces")
    if not isinstance(rows, list) or len(rows) != n_interfaces:
        raise ProtocolError(f"IFSTATS: expected {n_interfaces} rows of counters")
    out = []
    for row in rows:
        if not isinstance(row, list) or len(row) != 3:
            raise ProtocolError("IFSTATS: each row is [received, dropped, delivered]")
        out.append(SourceStats(*(_counter(v, "IFSTATS") for v in row)))
    return IfStats(tuple(out))


def parse_event(payload: bytes) -> Event:
    what = "EVENT"
    obj = parse_json_object(payload, what)
    kind = get_str(obj, "kind", what, limit=32)
    if kind not in EVENT_KINDS:
        raise ProtocolError(f"{what}: unknown kind {kind!r}")
    data = obj.get("data")
    if not isinstance(data, dict):
        raise ProtocolError(f"{what}: 'data' must be an object")
    what = f"EVENT {kind}"
    if kind == "alert":
        if get_str(data, "level", what, limit=16) not in ALERT_LEVELS:
            raise ProtocolError(f"{what}: unknown level")
        get_str(data, "kind", what, limit=64)
        get_str(data, "message", what, limit=MAX_TEXT)
    elif kind == "rate_change":
        get_float(data, "old", what)
        get_float(data, "new", what)
        get_str(data, "reason", what, limit=256, default="")
    elif kind == "stats":
        for key in ("captured", "bytes_captured", "received", "dropped", "sampled_out", "flows_tracked"):
            get_int(data, key, what, default=0)
        get_float(data, "rate", what, default=1.0)
        get_float(data, "elapsed", what, hi=1e12, default=0.0)
    elif kind == "warning":
        get_str(data, "message", what, limit=MAX_TEXT)
    return Event(kind, data)


def parse_entries(payload: bytes) -> Entries:
    if len(payload) > MAX_JSON:
        raise ProtocolError(f"ENTRIES: above the {MAX_JSON}-byte limit")
    items = []
    for line in payload.split(b"\n"):
        if line.strip():
            items.append(parse_json_object(line, "ENTRIES"))
    return Entries(tuple(items))


def parse_gap(payload: bytes) -> Gap:
    obj = parse_json_object(payload, "GAP")
    return Gap(get_int(obj, "frames", "GAP", lo=1, hi=MAX_TS), get_int(obj, "packets_before", "GAP", hi=MAX_TS))


def parse_end(payload: bytes) -> End:
    obj = parse_json_object(payload, "END")
    summary = obj.get("summary", {})
    if not isinstance(summary, dict):
        raise ProtocolError("END: 'summary' must be an object")
    return End(get_str(obj, "reason", "END", limit=256), summary)


class StreamDecoder:
    """Bytes of one stream in, frames out; :class:`ProtocolError` on anything malformed.

    Feed it what the connection delivers (any split). It holds at most one incomplete frame plus
    the last chunk fed. After an error or an END frame it accepts nothing more.
    """

    def __init__(self, *, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self.hello: Hello | None = None
        self.last_seq = 0
        self.ended = False
        self._buf = bytearray()
        self._started = False
        self._failed = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed:
            raise ProtocolError("the stream already failed")
        try:
            return self._feed(data)
        except ProtocolError:
            self._failed = True
            self._buf.clear()
            raise

    def _feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        pos = 0
        if not self._started:
            if len(buf) < PREAMBLE.size:
                if not MAGIC.startswith(bytes(buf[: len(MAGIC)])):
                    raise ProtocolError("not a kstap stream (bad magic)")
                return []
            magic, version, reserved = PREAMBLE.unpack_from(buf)
            if magic != MAGIC:
                raise ProtocolError("not a kstap stream (bad magic)")
            if version != VERSION:
                raise ProtocolError(f"the worker speaks stream version {version}; this kstap speaks {VERSION}")
            if reserved:
                raise ProtocolError("bad preamble")
            self._started = True
            pos = PREAMBLE.size
        out: list[Frame] = []
        while len(buf) - pos >= HEADER.size:
            kind, flags, reserved, length, seq = HEADER.unpack_from(buf, pos)
            if self.ended:
                raise ProtocolError("data after the END frame")
            if kind not in _PARSERS:
                raise ProtocolError(f"unknown frame type {kind}")
            if flags or reserved:
                raise ProtocolError("reserved header bits are set")
            if length > self.max_payload:
                raise ProtocolError(f"frame of {length} bytes is above the {self.max_payload}-byte limit")
            if seq > MAX_TS or seq < self.last_seq:
                raise ProtocolError(f"frame sequence went from {self.last_seq} to {seq}")
            if len(buf) - pos < HEADER.size + length:
                break
            start = pos + HEADER.size
            payload = bytes(buf[start : start + length])
            pos = start + length
            body = self._parse(FrameType(kind), payload)
            self.last_seq = seq
            out.append(Frame(seq, body))
        del buf[:pos]
        return out

    def _parse(self, kind: FrameType, payload: bytes) -> Body:
        if kind is FrameType.HELLO:
            hello = parse_hello(payload)
            old = self.hello
            if old is not None and (hello.run != old.run or hello.interfaces[: len(old.interfaces)] != old.interfaces):
                raise ProtocolError("a later HELLO may only add interfaces to the same run")
            self.hello = hello
            return hello
        if self.hello is None:
            raise ProtocolError("the stream must start with HELLO")
        n = len(self.hello.interfaces)
        if kind is FrameType.BATCH:
            return parse_batch(payload, n)
        if kind is FrameType.IFSTATS:
            return parse_ifstats(payload, n)
        if kind is FrameType.END:
            self.ended = True
        return _PARSERS[kind](payload)  # type: ignore[no-any-return]


_PARSERS: dict[int, Any] = {
    FrameType.HELLO: parse_hello, FrameType.BATCH: parse_batch, FrameType.IFSTATS: parse_ifstats,
    FrameType.EVENT: parse_event, FrameType.ENTRIES: parse_entries, FrameType.GAP: parse_gap,
    FrameType.END: parse_end,
}


def encode(seq: int, body: Body) -> bytes:
    """Any frame body back to bytes (tests and tools; the worker uses the specific encoders)."""
    if isinstance(body, Hello):
        return encode_hello(seq, body)
    if isinstance(body, Batch):
        return encode_batch(seq, body.watermark, body.records, body.comments)
    if isinstance(body, IfStats):
        return encode_ifstats(seq, body.counters)
    if isinstance(body, Event):
        return encode_event(seq, body.kind, body.data)
    if isinstance(body, Entries):
        return encode_entries(seq, [json.dumps(i, separators=(",", ":")) for i in body.items])
    if isinstance(body, Gap):
        return encode_gap(seq, body.frames, body.packets_before)
    return encode_end(seq, body.reason, body.summary)
