"""The worker side of a stream: the sink the pipeline writes into, the backlog readers follow,
and the inbox that carries live control requests to the capture loop.

Threads: the capture loop (the pipeline) publishes; HTTP handler threads read. Everything shared
sits behind one condition variable in :class:`StreamHub`. Publishing never waits for a reader:
a reader that falls behind the bounded backlog gets a GAP frame saying how much it missed.
"""

from __future__ import annotations

import functools
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kstap.contracts import EpbChunk, SinkCapabilities
from kstap.formats import pcapng
from kstap.formats import snapshot as snapshot_format
from kstap.model import Interface, PacketRecord, SourceStats, StatsSnapshot
from kstap.remote import protocol

WATERMARK_LAG_MS = 250
"""How far behind the capture loop the promised watermark trails (ms). It covers the ring's
block-retire time (20 ms for live consumers) plus scheduling slack with a wide margin; the cost
is merge latency, not correctness. A packet that still arrives late is kept (see the client)."""
STATS_INTERVAL = 0.5
"""Seconds between interface-counter frames while packets flow."""
DEFAULT_BACKLOG = 32 << 20
"""Bytes of frames kept for readers (reconnects resume from here). Counted in the worker's
memory, so it is modest; a reader further behind than this gets a GAP frame."""


# -- the backlog ---------------------------------------------------------------------------------------
@dataclass
class HubStats:
    frames: int = 0
    packets: int = 0
    backlog_bytes: int = 0
    evicted_frames: int = 0
    readers: int = 0
    watermark: int = 0


class StreamHub:
    """Frames one worker produced, numbered from 1, the newest kept up to ``backlog_bytes``."""

    def __init__(self, node: str, *, backlog_bytes: int = DEFAULT_BACKLOG) -> None:
        self.node = node
        self.run = secrets.token_hex(8)
        self.backlog_bytes = backlog_bytes
        self.hello: protocol.Hello | None = None
        self.state = "starting"
        """starting → capturing → ended (or failed)."""
        self.error: str | None = None
        self.latest_stats: dict[str, Any] | None = None
        self.ifstats: list[SourceStats] = []
        self.end_delivered = False
        self._cond = threading.Condition()
        self._frames: deque[tuple[int, bytes, int]] = deque()
        """(seq, frame bytes, packets produced up to and including this frame)."""
        self._seq = 0
        self._packets = 0
        self._bytes = 0
        self._evicted = 0
        self._readers = 0
        self._watermark = 0
        self._ended = False

    # -- publishing (capture loop) ---------------------------------------------------------------------
    def _append(self, build: Callable[[int], bytes], packets: int = 0) -> None:
        """Under the lock: number a frame, keep it, evict the oldest past the budget."""
        self._seq += 1
        frame = build(self._seq)
        self._packets += packets
        self._frames.append((self._seq, frame, self._packets))
        self._bytes += len(frame)
        while self._bytes > self.backlog_bytes and len(self._frames) > 1:
            _, old, _ = self._frames.popleft()
            self._bytes -= len(old)
            self._evicted += 1

    def set_hello(self, interfaces: Sequence[Interface], *, comment: str = "", mode: str = "full",
                  rate: float = 1.0, seed_id: str = "") -> None:
        """Describe the capture; a second call (more interfaces) is also sent to current readers."""
        with self._cond:
            hello = protocol.Hello(node=self.node, run=self.run, interfaces=tuple(interfaces), comment=comment,
                                   mode=mode, rate=rate, seed_id=seed_id, started_ns=time.time_ns())
            again = self.hello is not None
            self.hello = hello
            self.ifstats = [SourceStats() for _ in interfaces]
            if again:
                self._append(lambda seq: protocol.encode_hello(seq, hello))
            self._cond.notify_all()

    def publish_batch(self, watermark: int, records: Sequence[PacketRecord],
                      comments: Mapping[int, str] | None = None) -> None:
        with self._cond:
            for start, end in protocol.batch_cuts(records):
                part = records[start:end]
                notes = ({i - start: c for i, c in comments.items() if start <= i < end} if comments else None)
                self._append(functools.partial(_encode_batch, watermark=watermark, records=part, comments=notes),
                             len(part))
            self._watermark = max(self._watermark, watermark)
            self._cond.notify_all()

    def publish_batch_body(self, body: bytes, packets: int, watermark: int) -> None:
        """A BATCH body made elsewhere (the C encoders' EPBs rewritten, see :class:`StreamSink`)."""
        with self._cond:
            self._append(functools.partial(protocol.encode_batch_body, body=body), packets)
            self._watermark = max(self._watermark, watermark)
            self._cond.notify_all()

    def advance(self, watermark: int) -> None:
        """Nothing older than ``watermark`` will be published (heartbeats carry it)."""
        with self._cond:
            if watermark > self._watermark:
                self._watermark = watermark
                self._cond.notify_all()

    def publish_ifstats(self, counters: Sequence[SourceStats]) -> None:
        with self._cond:
            self.ifstats = list(counters)
            self._append(lambda seq: protocol.encode_ifstats(seq, counters))
            self._cond.notify_all()

    def publish_event(self, kind: str, data: Mapping[str, Any]) -> None:
        with self._cond:
            if kind == "stats":
                self.latest_stats = dict(data)
            self._append(lambda seq: protocol.encode_event(seq, kind, data))
            self._cond.notify_all()

    def publish_entries(self, lines: Sequence[str]) -> None:
        with self._cond:
            self._append(lambda seq: protocol.encode_entries(seq, lines))
            self._cond.notify_all()

    def end(self, reason: str, summary: Mapping[str, Any], *, error: str | None = None) -> None:
        """The capture is over: the END frame, after which readers are done."""
        with self._cond:
            if self._ended:
                return
            self.state = "failed" if error else "ended"
            self.error = error
            body = dict(summary)
            if error:
                body["error"] = error
            self._append(lambda seq: protocol.encode_end(seq, reason, body))
            self._ended = True
            self._cond.notify_all()

    # -- reading (HTTP handler threads) ---------------------------------------------------------------
    @property
    def seq(self) -> int:
        with self._cond:
            return self._seq

    def wait_hello(self, timeout: float) -> protocol.Hello | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.hello is None and not self._ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self.hello

    def attach(self) -> None:
        with self._cond:
            self._readers += 1

    def detach(self) -> None:
        with self._cond:
            self._readers -= 1

    def read(self, after: int, *, timeout: float, max_bytes: int = 4 << 20) -> tuple[list[bytes], int, bool]:
        """Frames after seq ``after`` (a GAP first if some are gone), waiting up to ``timeout``.

        Returns (frames, the last seq they reach, whether the END frame is among what was sent
        so far). With nothing new and the reader caught up, the one frame is a heartbeat.
        """
        with self._cond:
            if after >= self._seq and not self._ended:
                self._cond.wait(timeout)
            parts: list[bytes] = []
            frames = self._frames
            first = frames[0][0] if frames else self._seq + 1
            if after + 1 < first and after < self._seq:
                before = frames[0][2] - _packets_of(frames[0][1]) if frames else self._packets
                parts.append(protocol.encode_gap(first - 1, first - 1 - after, before))
                after = first - 1
            size = 0
            index = after + 1 - first
            while 0 <= index < len(frames) and size < max_bytes:
                seq, frame, _ = frames[index]
                parts.append(frame)
                size += len(frame)
                after = seq
                index += 1
            if not parts and after == self._seq and not self._ended:
                parts.append(protocol.encode_batch(after, self._watermark, []))
            done = self._ended and after == self._seq
            if done:
                self.end_delivered = True
            return parts, after, done

    def wait_end_delivered(self, timeout: float) -> bool:
        """Wait (bounded) until some reader has been sent the END frame."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.end_delivered:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.1))
            return self.end_delivered

    def stats(self) -> HubStats:
        with self._cond:
            return HubStats(self._seq, self._packets, self._bytes, self._evicted, self._readers, self._watermark)

    def wake(self) -> None:
        """Wake waiting readers (the server is closing)."""
        with self._cond:
            self._cond.notify_all()


def _encode_batch(seq: int, *, watermark: int, records: Sequence[PacketRecord],
                  comments: Mapping[int, str] | None) -> bytes:
    return protocol.encode_batch(seq, watermark, records, comments)


def _packets_of(frame: bytes) -> int:
    """Records in a stored frame (0 unless it is a BATCH)."""
    kind = frame[0]
    if kind != protocol.FrameType.BATCH:
        return 0
    _, count = protocol.BATCH_HEAD.unpack_from(frame, protocol.HEADER.size)
    return int(count)


# -- the sink the pipeline writes into -----------------------------------------------------------------
CountersProvider = Callable[[], list[pcapng.InterfaceCounters]]
BatchOfEpbs = Callable[[EpbChunk, int], tuple[bytes, int, int]]
"""(EPB bytes, watermark) → (BATCH body, packets, captured bytes): ``kstap.capture.afpacket.epb_batch``."""


class StreamSink:
    """:class:`kstap.sinks.files.PcapngFiles`' surface, publishing to a :class:`StreamHub`.

    **Watermark.** The capture loop alternates reads of the source with calls into this sink
    (``write`` after a read that kept packets, ``tick`` after an empty read) and
    the once-a-second progress report (:meth:`loop_point`, between reads). A read that returns
    at a sink call started after the previous loop point ``m``, so every packet stamped before
    ``m - lag`` (whose block the kernel had retired by ``m``) has been handed over: the frame
    carries ``m - lag``. Two progress reports in a row prove a read happened between them
    (whatever the sampler kept), so the watermark moves on even when every packet is sampled out.
    """

    def __init__(self, hub: StreamHub, interfaces: Sequence[Interface], comment: str,
                 counters: CountersProvider | None = None, *, mode: str = "full", rate: float = 1.0,
                 seed_id: str = "", lag_ms: int = WATERMARK_LAG_MS, batch_of_epbs: BatchOfEpbs | None = None,
                 clock: Callable[[], int] = time.time_ns, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.hub = hub
        self.interfaces = list(interfaces)
        self.files: list[str] = []
        self.packets_written = 0
        self.bytes_written = 0
        self.capabilities = SinkCapabilities(patient=False, encoded_blocks=batch_of_epbs is not None)
        """Stream readers merge on the watermark, so the loop must keep the time moving. With
        ``batch_of_epbs`` (the C helper's rewriter) the capture's C encoders serve the stream too:
        their EPB bytes become BATCH bodies without a Python step per packet."""
        self._batch_of_epbs = batch_of_epbs
        self._counters = counters
        self._lag = lag_ms * 1_000_000
        self._clock = clock
        self._monotonic = monotonic
        self._mark = clock()
        self._last_was_progress = False
        self._stats_due = 0.0
        self._delivered = [0] * len(self.interfaces)
        hub.set_hello(self.interfaces, comment=comment, mode=mode, rate=rate, seed_id=seed_id)

    def _sink_call(self) -> int:
        safe = self._mark - self._lag
        self._mark = self._clock()
        self._last_was_progress = False
        return safe

    def loop_point(self) -> None:
        """Called between reads (the progress report): lets the watermark move without packets."""
        now = self._clock()
        if self._last_was_progress:
            self.hub.advance(self._mark - self._lag)
        self._mark = now
        self._last_was_progress = True
        self._publish_stats(force=True)

    def write(self, records: Sequence[PacketRecord], comments: Mapping[int, str] | None = None) -> None:
        watermark = self._sink_call()
        if records:
            self.hub.publish_batch(watermark, records, comments)
            self.packets_written += len(records)
            for rec in records:
                self.bytes_written += rec[1]
                if rec[4] < len(self._delivered):
                    self._delivered[rec[4]] += 1
        else:
            self.hub.advance(watermark)
        self._publish_stats()

    def write_encoded(self, chunks: list[EpbChunk], packets: int, if_id: int = 0) -> None:
        """EPB bytes of ``packets`` packets of interface ``if_id`` (the C encoders'), published as
        BATCH frames, one per chunk (a ring block's worth: about :data:`protocol.BATCH_TARGET`)."""
        watermark = self._sink_call()
        rewrite = self._batch_of_epbs
        assert rewrite is not None, "write_encoded without encoded_blocks"
        published = 0
        for chunk in chunks if packets else ():
            body, n, captured = rewrite(chunk, watermark)
            if n:
                self.hub.publish_batch_body(body, n, watermark)
                published += n
                self.bytes_written += captured
        if published:
            self.packets_written += published
            if if_id < len(self._delivered):
                self._delivered[if_id] += published
        else:
            self.hub.advance(watermark)
        self._publish_stats()

    def ensure_interfaces(self, interfaces: Sequence[Interface]) -> None:
        if len(interfaces) > len(self.interfaces):
            hello = self.hub.hello
            self.interfaces = list(interfaces)
            self._delivered.extend(0 for _ in range(len(interfaces) - len(self._delivered)))
            self.hub.set_hello(self.interfaces, comment=hello.comment if hello else "",
                               mode=hello.mode if hello else "full", rate=hello.rate if hello else 1.0,
                               seed_id=hello.seed_id if hello else "")

    def tick(self) -> None:
        self.hub.advance(self._sink_call())
        self._publish_stats()

    def _publish_stats(self, force: bool = False) -> None:
        now = self._monotonic()
        if not force and now < self._stats_due:
            return
        self._stats_due = now + STATS_INTERVAL
        counters = self._counters() if self._counters is not None else []
        rows = [SourceStats(c.received, c.dropped, self._delivered[i] if i < len(self._delivered) else c.delivered)
                for i, c in enumerate(counters[: len(self.interfaces)])]
        rows.extend(SourceStats(0, 0, self._delivered[i]) for i in range(len(rows), len(self.interfaces)))
        self.hub.publish_ifstats(rows)

    def close(self) -> bool:
        self._publish_stats(force=True)
        return True


class EntryLines:
    """A text stream for the entry writer: each complete NDJSON line becomes part of an ENTRIES frame."""

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub
        self._partial = ""
        self.dropped = 0
        """Lines longer than a frame allows (never seen in practice; counted, not sent)."""

    def write(self, text: str) -> int:
        data = self._partial + text
        *lines, self._partial = data.split("\n")
        batch: list[str] = []
        size = 0
        for line in lines:
            if not line:
                continue
            n = len(line.encode()) + 1
            if n > protocol.MAX_JSON:
                self.dropped += 1
                continue
            if size + n > protocol.MAX_JSON:
                self.hub.publish_entries(batch)
                batch, size = [], 0
            batch.append(line)
            size += n
        if batch:
            self.hub.publish_entries(batch)
        return len(text)

    def flush(self) -> None:
        return None


# -- the snapshot as it travels ------------------------------------------------------------------------
def snapshot_json(s: StatsSnapshot) -> dict[str, Any]:
    """A worker's progress report for the stream and ``/v1/stats`` (:func:`kstap.formats.snapshot.stream`:
    no histories, readers keep theirs)."""
    return protocol.sanitize_object(snapshot_format.stream(s))


# -- live control ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ControlRequest:
    """What ``POST /v1/control`` asks for; None fields stay as they are."""

    rate: float | None = None
    """New sampling rate for new flows, (0, 1] (percentage mode)."""
    filter: str | None = None
    """New BPF expression (pcap-filter syntax), replacing the kernel filter atomically."""


class ControlRejected(Exception):
    """A control request the worker will not apply: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Pending:
    generation: int
    request: ControlRequest
    error: str | None = None
    done: bool = False
    waiters: list[int] = field(default_factory=list)


class ControlInbox:
    """Requests from HTTP threads, applied by the capture loop at its next tick (about 1 Hz).

    The loop calls :meth:`take` and then :meth:`done` with the outcome; a submitter waits for it
    (bounded). Requests that arrive before the loop took the previous one are merged into it.
    """

    def __init__(self, validate: Callable[[ControlRequest], None] | None = None) -> None:
        self._validate = validate
        self._cond = threading.Condition()
        self._pending: ControlRequest | None = None
        self._generation = 0
        self._taken_generation = 0
        self._results: dict[int, str | None] = {}
        self.current: dict[str, Any] = {}
        """What was last applied: {"rate": …, "filter": …}."""

    def submit(self, request: ControlRequest, *, timeout: float = 3.0) -> tuple[bool, str | None]:
        """Queue ``request``; (applied, error) once the loop applied it, (False, None) after ``timeout``.

        Raises :class:`ControlRejected` when the validator refuses it.
        """
        if self._validate is not None:
            self._validate(request)
        with self._cond:
            old = self._pending
            if old is not None:
                request = ControlRequest(request.rate if request.rate is not None else old.rate,
                                         request.filter if request.filter is not None else old.filter)
            self._pending = request
            self._generation += 1
            mine = self._generation
            deadline = time.monotonic() + timeout
            while mine not in self._results:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False, None
                self._cond.wait(left)
            return True, self._results[mine]

    def take(self) -> ControlRequest | None:
        """The capture loop: the request to apply now, if any."""
        with self._cond:
            request, self._pending = self._pending, None
            if request is not None:
                self._taken_generation = self._generation
            return request

    def done(self, request: ControlRequest, error: str | None = None) -> None:
        """The capture loop: ``request`` (from :meth:`take`) was applied, or failed with ``error``."""
        with self._cond:
            if error is None:
                if request.rate is not None:
                    self.current["rate"] = request.rate
                if request.filter is not None:
                    self.current["filter"] = request.filter
            for gen in range(max(1, self._taken_generation - 64), self._taken_generation + 1):
                self._results.setdefault(gen, error)
            while len(self._results) > 256:
                self._results.pop(min(self._results))
            self._cond.notify_all()
