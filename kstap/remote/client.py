"""N workers' streams merged into one time-ordered record stream: the CLI's side of remote capture.

:class:`RemoteSource` implements the pipeline's source protocol (``interfaces``, ``read``,
``drain``, ``stats``, ``close``, ``set_filter``). One reader thread per worker keeps a stream open
(reconnecting with backoff, resuming after the last frame it saw); the caller's thread merges.

**Merge.** Each worker's frames carry a *watermark*: no later packet from it is older. Packets are
held until every worker still answering has promised past them, then released in timestamp
order, the fanout merge (:mod:`kstap.capture.fanout`) across machines. A worker whose watermark
has not moved for ``max_hold`` seconds (stalled, reconnecting, not yet attached) stops holding
the others back; a packet that arrives behind what was already released is still delivered
(counted in ``late``), so nothing received is ever dropped.

**Identity.** Worker ``i`` (the order of ``endpoints``) writes records with ``worker = i``; each of
its interfaces gets its own id, named ``NODE/IFACE`` (one pcapng IDB per node and interface). A
worker that restarts (a new run id in its HELLO) keeps its ids; its counters continue from where
the previous run stopped.

**Events** reach the caller through ``on_event(kind, data)`` (kinds ``alert`` and ``rate_change``,
as the pipeline's :class:`~kstap.pipeline.Reporter` takes them) and ``on_entry(node, entry)``,
always from inside :meth:`RemoteSource.read`/:meth:`RemoteSource.drain`, on the caller's thread.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kstap.backoff import Backoff
from kstap.contracts import SourceCapabilities
from kstap.errors import WorkerFailure
from kstap.filters.bpf import Program
from kstap.merge import TimeOrderedMerge
from kstap.model import Interface, PacketRecord, SourceStats, WorkerStats
from kstap.remote import protocol
from kstap.remote.transport import DirectTransport, Response, Transport, TransportError
from kstap.remote.vantage import EntryMerge, NodeFold

EventCallback = Callable[[str, dict[str, object]], None]
EntryCallback = Callable[[str, dict[str, Any]], None]
NEVER = protocol.MAX_TS


WORKER_HINT = "the workers may have been removed or not started; 'kstap clean' then rerun the capture"


class Meter:
    """A token bucket shared by the readers of the API-server streams: reading slower than the workers send
    leaves the rest in their backlogs (and, past those, a GAP), so the API server proxies at most
    ``rate`` bytes/s of capture, with bursts up to one second's worth."""

    def __init__(self, rate: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._monotonic = monotonic
        self._tokens = rate
        self._at = monotonic()
        self._lock = threading.Lock()
        self.waited = 0.0
        """Seconds readers spent waiting for the budget (the dashboard's hint that it binds)."""

    def take(self, n: int, stop: threading.Event) -> None:
        with self._lock:
            now = self._monotonic()
            self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate) - n
            self._at = now
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self.waited += wait
            stop.wait(wait)


@dataclass(frozen=True)
class WorkerEndpoint:
    """One worker to read from: its node name, where it is, its token, how to reach it."""

    name: str
    """The node (or any label): interface names become ``NAME/IFACE``."""
    base_url: str = ""
    """``http://host:port`` for :class:`~kstap.remote.transport.DirectTransport` (when no transport)."""
    token: str = field(default="", repr=False)
    transport: Transport | None = None
    metered: bool = False
    """Its stream goes through the API server and counts against the source's ``api_budget``."""

    def resolved(self) -> Transport:
        return self.transport if self.transport is not None else DirectTransport(self.base_url)


@dataclass
class _Worker:
    index: int
    endpoint: WorkerEndpoint
    state: str = "connecting"
    """connecting → up ⇄ reconnecting → lost (reported) → up again; or ended."""
    run: str | None = None
    node: str = ""
    iface_map: list[int] = field(default_factory=list)
    linktypes: list[int] = field(default_factory=list)
    """The link type of each of the worker's interfaces (its HELLO)."""
    watermark: int = 0
    moved_at: float = 0.0
    """Monotonic time the watermark last advanced (or the worker attached)."""
    down_since: float | None = None
    error: str = ""
    restarts: int = 0
    captured: int = 0
    session_packets: int = 0
    lost_packets: int = 0
    late: int = 0
    counters: list[SourceStats] = field(default_factory=list)
    stats: dict[str, Any] | None = None
    rate: float = 1.0
    rate_history: list[tuple[float, float]] = field(default_factory=list)
    desired: dict[str, Any] = field(default_factory=dict)
    """The last control settings sent to it (sent again when it restarts)."""
    response: Response | None = None
    thread: threading.Thread | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    """Set to cut a reader's pause short (its endpoint was replaced, or the source closes)."""
    reported_error: str = ""


@dataclass
class _Cursor:
    """Where a reader is in a worker's stream: resume after ``after`` of ``run``."""

    after: int = 0
    run: str = ""
    ended_run: str = ""
    """The run whose END frame was passed on (its frames are not passed on again)."""


class _Inbox:
    """Items from reader threads to the merging thread, bounded in bytes (readers wait)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._cond = threading.Condition()
        self._items: deque[tuple[Any, ...]] = deque()
        self._bytes = 0
        self.closed = False

    def put(self, item: tuple[Any, ...], size: int = 0) -> None:
        with self._cond:
            while self._bytes > self.limit and not self.closed:
                self._cond.wait(0.2)
            self._items.append((*item, size))
            self._bytes += size
            self._cond.notify_all()

    def take_all(self, timeout: float) -> list[tuple[Any, ...]]:
        with self._cond:
            if not self._items and timeout > 0:
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()
            return items

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class RemoteSource:
    """Many workers' streams as one source for the pipeline (see the module docstring)."""


    def __init__(self, endpoints: Sequence[WorkerEndpoint], *, connect_timeout: float = 10.0,
                 grace: float = 3.0, max_hold: float = 3.0, read_timeout: float = 10.0,
                 backoff: Backoff | tuple[float, float] = Backoff(0.2, 2.0, 5.0, attempts=0),
                 queue_bytes: int = 64 << 20,
                 on_event: EventCallback | None = None, on_entry: EntryCallback | None = None,
                 entries: bool = False, fold_nodes: bool = False, api_budget: float | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not endpoints:
            raise WorkerFailure("no workers to read from", hint=WORKER_HINT)
        names = [e.name for e in endpoints]
        if len(set(names)) != len(names):
            raise WorkerFailure("two workers have the same name", hint="give each node's worker its own name")
        self.interfaces: list[Interface] = []
        self.capabilities = SourceCapabilities(sampled_upstream=True, packet_comments=True, worker_stats=True,
                                               dissected_upstream=entries)
        """The workers sampled on their nodes (and dissected, with ``entries``: their entries are
        kept for :meth:`take_entries`); their packet comments come along; each worker's figures
        are known here. Its :meth:`set_filter` is per node (the cluster session's), not a kernel
        filter the loop could swap."""
        self._entry_merge = EntryMerge()
        """The workers' entries: one per exchange, naming the nodes that saw it (:mod:`kstap.remote.vantage`)."""
        self._draining = False
        self.last_comments: dict[int, str] = {}
        """Packet comments of the records the last :meth:`read`/:meth:`drain` returned, by index
        (the workers' first-packet, rate and shed comments)."""
        self.grace = grace
        self.max_hold = max_hold
        self.read_timeout = read_timeout
        self.backoff = backoff if isinstance(backoff, Backoff) else Backoff(backoff[0], 2.0, backoff[1], attempts=0)
        """Between reconnects of a worker's stream (never given up: the worker may come back)."""
        self.on_event = on_event
        self.on_entry = on_entry
        self._monotonic = monotonic
        self.meter = Meter(api_budget) if api_budget else None
        """Shared by the metered (API-server) streams: at most ``api_budget`` bytes/s together."""
        self.fold = NodeFold() if fold_nodes else None
        """With ``fold_nodes`` (node workers capturing ``-i any``): one interface per node and link type,
        a packet's copies inside one node folded into one (:mod:`kstap.remote.vantage`)."""
        self._iface_ids: dict[tuple[int, str], int] = {}
        self._base: dict[int, SourceStats] = {}
        self._merge: TimeOrderedMerge[tuple[PacketRecord, str | None]] = TimeOrderedMerge(_noted_ts)
        """(record, its comment) of every worker, released once all workers are past it."""
        self._released_upto = 0
        self._inbox = _Inbox(queue_bytes)
        self._closing = threading.Event()
        self._started = monotonic()
        self.workers = [_Worker(i, e, moved_at=self._started) for i, e in enumerate(endpoints)]
        for w in self.workers:
            w.thread = threading.Thread(target=self._reader, args=(w,), name=f"kstap-remote-{w.endpoint.name}",
                                        daemon=True)
            w.thread.start()
        self._await_first(connect_timeout)

    # -- the pipeline's calls --------------------------------------------------------------------------
    def read(self, timeout_ms: int) -> list[PacketRecord]:
        """Released packets (time-ordered), waiting up to ``timeout_ms`` for some."""
        deadline = self._monotonic() + timeout_ms / 1000
        while True:
            left = deadline - self._monotonic()
            self._handle(self._inbox.take_all(min(max(left, 0.0), 0.05)))
            self._check_lost()
            out = self._release(self._floor())
            if out or self._monotonic() >= deadline:
                return out

    def drain(self, retire_ms: int) -> list[PacketRecord]:
        """At stop: wait (briefly) until each answering worker has promised past now, take the rest."""
        stop_ns = time.time_ns()
        deadline = self._monotonic() + max(1.0, 4 * protocol_lag_seconds())
        while self._monotonic() < deadline:
            waiting = [w for w in self.workers if w.state == "up" and w.watermark < stop_ns]
            if not waiting:
                break
            self._handle(self._inbox.take_all(0.05))
        self._handle(self._inbox.take_all(0))
        self._draining = True  # the capture is over: entries still waiting for a twin go out as they are
        return self._release(max(stop_ns, self._floor()))

    def take_entries(self, final: bool = False) -> list[dict[str, Any]]:
        """The workers' entries (with ``entries``) whose wait for a twin from another node is over, in
        arrival order, each naming its ``nodes``; every one that is left with ``final`` or after a drain."""
        return self._entry_merge.ready(self._monotonic(), final=final or self._draining)

    def stats(self) -> list[SourceStats]:
        """Counters per interface (parallel to :attr:`interfaces`), summed over worker restarts."""
        out = [SourceStats() for _ in self.interfaces]
        for gid, s in self._base.items():
            out[gid].add(s)
        for w in self.workers:
            for local, gid in enumerate(w.iface_map):
                if local < len(w.counters):
                    out[gid].add(w.counters[local])
        return out

    def set_filter(self, program: Program | str, node: str | None = None, *, timeout: float = 6.0) -> dict[str, str]:
        """Send a new BPF expression to every worker (or one node's); returns node → outcome."""
        expression = program.expression if isinstance(program, Program) else program
        return self.control({"filter": expression}, node=node, timeout=timeout)

    def set_rate(self, rate: float, node: str | None = None, *, timeout: float = 6.0) -> dict[str, str]:
        """Send a new sampling rate (percentage-mode workers); returns node → outcome."""
        return self.control({"rate": rate}, node=node, timeout=timeout)

    def control(self, body: dict[str, Any], node: str | None = None, *, timeout: float = 6.0) -> dict[str, str]:
        """POST ``body`` to ``/v1/control`` of the workers (concurrently, bounded by ``timeout``).

        Outcomes: ``applied``, ``queued`` (the worker applies it within a second), ``unreachable: …``
        or ``refused: …``. Settings are remembered per worker and sent again after a restart.
        """
        targets = [w for w in self.workers if node is None or w.endpoint.name == node]
        if node is not None and not targets:
            raise WorkerFailure(f"no worker for node {node!r}", hint=WORKER_HINT)
        results: dict[str, str] = {}
        threads = []
        for w in targets:
            w.desired.update(body)
            t = threading.Thread(target=lambda w=w: results.__setitem__(w.endpoint.name,
                                                                        self._post_control(w, body, timeout)),
                                 daemon=True)
            t.start()
            threads.append(t)
        end = time.monotonic() + timeout + 1
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        for w in targets:
            results.setdefault(w.endpoint.name, "unreachable: no answer in time")
        return results

    def close(self) -> None:
        self._closing.set()
        self._inbox.close()
        for w in self.workers:
            w.wake.set()
        for w in self.workers:
            resp = w.response
            if resp is not None:
                with contextlib.suppress(Exception):  # closing from another thread may race
                    resp.close()
        for w in self.workers:
            if w.thread is not None:
                w.thread.join(timeout=2)

    # -- for the dashboard and the summary -----------------------------------------------------------
    def worker_stats(self) -> list[WorkerStats]:
        """One row per worker (node), for the snapshot's ``workers``."""
        rows = []
        for w in self.workers:
            received = dropped = 0
            for local, gid in enumerate(w.iface_map):
                base = self._base.get(gid)
                if base is not None:
                    received += base.received
                    dropped += base.dropped
                if local < len(w.counters):
                    received += w.counters[local].received
                    dropped += w.counters[local].dropped
            rows.append(WorkerStats(worker=w.index, node=w.endpoint.name, captured=w.captured, received=received,
                                    dropped=dropped, rate=w.rate, alive=w.state in ("up", "connecting", "reconnecting"),
                                    restarts=w.restarts, rate_history=list(w.rate_history[-600:])))
        return rows

    def worker_states(self) -> dict[str, str]:
        return {w.endpoint.name: w.state for w in self.workers}

    def worker_snapshots(self) -> dict[str, dict[str, Any] | None]:
        """Each worker's latest stats event (see :func:`kstap.remote.hub.snapshot_json`)."""
        return {w.endpoint.name: w.stats for w in self.workers}

    def transit_losses(self) -> dict[str, int]:
        """Packets a worker captured that never reached us (we fell behind its backlog)."""
        return {w.endpoint.name: w.lost_packets for w in self.workers}

    def late_packets(self) -> dict[str, int]:
        """Packets that arrived after newer ones had been released (written out of order)."""
        return {w.endpoint.name: w.late for w in self.workers}

    def add_endpoint(self, endpoint: WorkerEndpoint) -> None:
        """A worker on a node that had none (churn brought targets there): read from it too.

        Its interfaces are appended to :attr:`interfaces` when its HELLO arrives (the pcapng sink
        adds their IDBs then); until it answers it holds the merge back for at most ``max_hold``.
        """
        if any(w.endpoint.name == endpoint.name for w in self.workers):
            raise WorkerFailure(f"there is already a worker for node {endpoint.name!r}", hint=WORKER_HINT)
        w = _Worker(len(self.workers), endpoint, moved_at=self._monotonic(), down_since=self._monotonic())
        w.thread = threading.Thread(target=self._reader, args=(w,), name=f"kstap-remote-{endpoint.name}",
                                    daemon=True)
        self.workers.append(w)  # before its reader runs: the merge looks workers up by index
        w.thread.start()

    def replace_endpoint(self, endpoint: WorkerEndpoint) -> None:
        """A node's worker moved (its pod was replaced): read from the new one from now on."""
        for w in self.workers:
            if w.endpoint.name == endpoint.name:
                w.endpoint = endpoint
                w.wake.set()  # a reader pausing (backoff, or after its run's END) tries the new one now
                resp = w.response
                if resp is not None:
                    with contextlib.suppress(Exception):  # see close()
                        resp.close()
                return
        raise WorkerFailure(f"no worker for node {endpoint.name!r}", hint=WORKER_HINT)

    # -- reader threads --------------------------------------------------------------------------------
    def _reader(self, w: _Worker) -> None:
        """One worker's stream, for as long as the source is open.

        Reconnects with exponential backoff, resuming after the last frame seen. After the END
        of a run it keeps asking (at the slowest pace) so that a restarted worker (a new run) is
        picked up again; the ended run's frames are not passed on twice.
        """
        backoff = self.backoff
        top = backoff.maximum
        failures = 0
        at = _Cursor()
        while not self._closing.is_set():
            endpoint = w.endpoint
            try:
                transport = endpoint.resolved()
                query = f"/v1/stream?after={at.after}" + (f"&run={at.run}" if at.run else "")
                resp = transport.request("GET", query, headers=transport.auth_headers(endpoint.token),
                                         timeout=self.read_timeout)
            except (TransportError, OSError) as exc:
                self._inbox.put(("down", w.index, getattr(exc, "message", str(exc))))
                failures += 1
                self._pause(w, top if at.ended_run else backoff.delay(failures))
                continue
            except Exception as exc:  # a transport bug must not kill the reader silently
                self._inbox.put(("down", w.index, f"{type(exc).__name__}: {exc}"))
                self._pause(w, top)
                continue
            w.response = resp
            reason = "the stream ended"
            try:
                if resp.status != 200:
                    reason = f"HTTP {resp.status}: {_error_text(resp)}"
                else:
                    self._follow(w, resp, at)
                    failures = 0
            except protocol.ProtocolError as exc:
                reason = f"bad stream: {exc.message}"
            except OSError as exc:
                reason = f"connection lost: {exc.strerror or exc}"
            finally:
                w.response = None
                with contextlib.suppress(Exception):  # best effort
                    resp.close()
            if self._closing.is_set():
                return
            if at.ended_run and at.ended_run == at.run:
                self._pause(w, top)  # the run is over: look for a new one now and then
                continue
            self._inbox.put(("down", w.index, reason))
            failures += 1
            self._pause(w, backoff.delay(failures))

    def _pause(self, w: _Worker, seconds: float) -> None:
        """Wait ``seconds`` unless the source closes or the worker's endpoint is replaced."""
        if w.wake.wait(seconds):
            w.wake.clear()

    def _follow(self, w: _Worker, resp: Response, at: _Cursor) -> None:
        """Decode one open stream into the inbox, moving ``at`` past every frame passed on."""
        decoder = protocol.StreamDecoder()
        meter = self.meter if w.endpoint.metered else None
        while not self._closing.is_set():
            data = resp.read1(1 << 16)
            if not data:
                return
            if meter is not None:
                meter.take(len(data), self._closing)
            for frame in decoder.feed(data):
                body = frame.body
                if isinstance(body, protocol.Hello):
                    if body.run == at.ended_run:
                        return  # still the run that ended: nothing new
                    at.run = body.run
                at.after = frame.seq
                self._inbox.put(("frame", w.index, frame), _frame_size(frame))
                if isinstance(body, protocol.End):
                    at.ended_run = at.run

    def _post_control(self, w: _Worker, body: dict[str, Any], timeout: float) -> str:
        endpoint = w.endpoint
        data = json.dumps(body).encode()
        try:
            transport = endpoint.resolved()
            headers = {**transport.auth_headers(endpoint.token), "Content-Type": "application/json"}
            resp = transport.request("POST", "/v1/control", headers=headers, body=data, timeout=timeout)
        except (TransportError, OSError) as exc:
            return f"unreachable: {getattr(exc, 'message', exc)}"
        try:
            if resp.status == 200:
                return "applied"
            if resp.status == 202:
                return "queued"
            return f"refused: HTTP {resp.status}: {_error_text(resp)}"
        except OSError as exc:
            return f"unreachable: {exc}"
        finally:
            resp.close()

    # -- merging (caller's thread) ------------------------------------------------------------------------
    def _await_first(self, timeout: float) -> None:
        """Wait for every worker's HELLO (bounded); interface ids then follow the endpoints' order."""
        deadline = self._monotonic() + timeout
        held: list[tuple[Any, ...]] = []
        hellos: dict[int, protocol.Hello] = {}
        while self._monotonic() < deadline and len(hellos) < len(self.workers):
            items = self._inbox.take_all(0.05)
            for item in items:
                if item[0] == "frame" and isinstance(item[2].body, protocol.Hello):
                    hellos.setdefault(item[1], item[2].body)
            held += items
        for index in sorted(hellos):
            for iface in hellos[index].interfaces:
                self._interface_id(self.workers[index], iface)
        self._handle(held)
        if all(w.run is None for w in self.workers):
            reasons = "; ".join(f"{w.endpoint.name}: {w.error or 'no answer'}" for w in self.workers)
            self.close()
            raise WorkerFailure(f"no worker answered within {timeout:g}s ({reasons})",
                                hint="check that the workers run and the token matches (kstap worker logs)")
        for w in self.workers:
            if w.run is None and w.state != "lost":
                self._declare_lost(w)

    def _handle(self, items: list[tuple[Any, ...]]) -> None:
        for item in items:
            kind, index = item[0], item[1]
            w = self.workers[index]
            if kind == "frame":
                self._on_frame(w, item[2])
            elif kind == "down":
                self._on_down(w, item[2])
            elif kind == "control" and item[2].startswith(("unreachable", "refused")):
                self._alert("warn", "worker-control", f"worker {w.index} on {w.endpoint.name}: could not "
                                                      f"restore its settings after a restart ({item[2]})")

    def _on_frame(self, w: _Worker, frame: protocol.Frame) -> None:
        body = frame.body
        if isinstance(body, protocol.Batch):
            self._on_batch(w, body)
        elif isinstance(body, protocol.Hello):
            self._on_hello(w, body)
        elif isinstance(body, protocol.IfStats):
            w.counters = list(body.counters)
        elif isinstance(body, protocol.Event):
            self._on_event(w, body)
        elif isinstance(body, protocol.Entries):
            if self.capabilities.dissected_upstream:
                now = self._monotonic()
                for item in body.items:
                    self._entry_merge.add(w.endpoint.name, item, now)
            if self.on_entry is not None:
                for item in body.items:
                    self.on_entry(w.endpoint.name, item)
        elif isinstance(body, protocol.Gap):
            lost = max(0, body.packets_before - w.session_packets)
            w.session_packets = body.packets_before
            w.lost_packets += lost
            self._alert("warn", "worker-gap", f"worker {w.index} on {w.endpoint.name}: {lost} packets lost in "
                                              f"transit (the reader fell behind the worker's backlog)")
        elif isinstance(body, protocol.End):
            w.state = "ended"
            w.watermark = NEVER
            error = body.summary.get("error")
            if error:
                self._alert("critical", "worker-failed", f"worker {w.index} on {w.endpoint.name} stopped: {error}")
            else:
                self._alert("info", "worker-ended", f"worker {w.index} on {w.endpoint.name} finished ({body.reason})")

    def _on_hello(self, w: _Worker, hello: protocol.Hello) -> None:
        name = w.endpoint.name
        if w.run is not None and hello.run != w.run:
            for local, gid in enumerate(w.iface_map):  # the old run's counters carry over
                if local < len(w.counters):
                    self._base.setdefault(gid, SourceStats()).add(w.counters[local])
            w.counters = []
            w.restarts += 1
            w.session_packets = 0
            w.watermark = 0
            self._alert("info", "worker-restarted", f"worker {w.index} on {name} restarted")
            if w.desired:
                body = dict(w.desired)
                threading.Thread(target=lambda: self._inbox.put(("control", w.index, self._post_control(
                    w, body, 6.0))), daemon=True).start()
        elif w.state == "lost":
            self._alert("info", "worker-reattached", f"worker {w.index} on {name} answers again; capture resumed")
        w.run = hello.run
        w.node = hello.node
        w.rate = hello.rate
        w.state = "up"
        w.down_since = None
        w.error = ""
        w.moved_at = self._monotonic()
        w.linktypes = [i.linktype for i in hello.interfaces]
        w.iface_map = w.iface_map[: len(hello.interfaces)]
        for local, iface in enumerate(hello.interfaces):
            if local >= len(w.iface_map):
                w.iface_map.append(self._interface_id(w, iface))

    def _interface_id(self, w: _Worker, iface: Interface) -> int:
        """The merged id of a worker's interface (by name: stable across restarts); new ones are appended."""
        name = w.endpoint.name
        if self.fold is not None:  # one per node and link type: NODE/any (NODE/any-LT for a second type)
            key = (w.index, f"\0{iface.linktype}")
            label = f"any-{iface.linktype}" if any(k[0] == w.index for k in self._iface_ids) else "any"
        else:
            key, label = (w.index, iface.name), iface.name
        known = self._iface_ids.get(key)
        if known is not None:
            return known
        gid = len(self.interfaces)
        self._iface_ids[key] = gid
        what = f"every interface of node {name} (copies inside the node folded)" if self.fold is not None else \
            f"{iface.name} on node {name}"
        self.interfaces.append(Interface(f"{name}/{label}", iface.linktype, iface.snaplen, iface.filter,
                                         description=what))
        return gid

    def _on_batch(self, w: _Worker, batch: protocol.Batch) -> None:
        if batch.watermark > w.watermark:
            w.watermark = batch.watermark
            w.moved_at = self._monotonic()
        records = batch.records
        if not records:
            return
        mapping, index, comments, upto = w.iface_map, w.index, batch.comments, self._released_upto
        late = 0
        fold, linktypes = self.fold, w.linktypes
        kept = 0
        held: list[tuple[PacketRecord, str | None]] = []
        for i, (ts, caplen, origlen, data, ifid, _) in enumerate(records):
            if fold is not None and not fold.admit(index, ts, data, linktypes[ifid], ifid, origlen):
                continue
            kept += 1
            if ts < upto:
                late += 1
            held.append(((ts, caplen, origlen, data, mapping[ifid], index), comments.get(i)))
        self._merge.add(held)
        w.late += late
        w.captured += kept
        w.session_packets += len(records)

    def _on_event(self, w: _Worker, event: protocol.Event) -> None:
        name, data = w.endpoint.name, event.data
        if event.kind == "stats":
            w.stats = data
            w.rate = float(data.get("rate", w.rate))
            w.rate_history.append((round(self._monotonic() - self._started, 3), w.rate))
            del w.rate_history[:-600]
        elif event.kind == "alert":
            self._alert(str(data["level"]), str(data["kind"]), f"{name}: {data['message']}")
        elif event.kind == "rate_change":
            w.rate = float(data["new"])
            if self.on_event is not None:
                self.on_event("rate_change", {**data, "node": name, "worker": w.index})
        elif event.kind == "warning":
            self._alert("warn", "worker-warning", f"{name}: {data['message']}")

    def _on_down(self, w: _Worker, reason: str) -> None:
        w.error = reason
        if w.state == "ended":
            return
        if w.state == "up":
            w.state = "reconnecting"
        if w.down_since is None:
            w.down_since = self._monotonic()
        if w.state == "lost" and reason != w.reported_error and reason.startswith(("HTTP 401", "bad stream")):
            w.reported_error = reason  # a lasting cause worth saying once more
            self._alert("warn", "worker-lost", f"worker {w.index} on {w.endpoint.name}: {reason}")

    def _check_lost(self) -> None:
        now = self._monotonic()
        for w in self.workers:
            if w.state in ("reconnecting", "connecting") and w.down_since is not None and \
                    now - w.down_since >= self.grace:
                self._declare_lost(w)

    def _declare_lost(self, w: _Worker) -> None:
        w.state = "lost"
        w.reported_error = w.error
        why = f" ({w.error})" if w.error else ""
        self._alert("critical", "worker-lost", f"worker {w.index} on {w.endpoint.name} stopped answering{why}; "
                                               "its packets are missing from the capture until it is back")

    def _floor(self) -> int:
        """The time up to which every worker that still counts has promised its packets."""
        now = self._monotonic()
        floor = NEVER
        for w in self.workers:
            if w.state in ("ended", "lost") or now - w.moved_at > self.max_hold:
                continue
            floor = min(floor, w.watermark)
        return floor

    def _release(self, floor: int) -> list[PacketRecord]:
        out: list[PacketRecord] = []
        notes: dict[int, str] = {}
        for rec, note in self._merge.release(max(floor, self._released_upto)):
            if note is not None:
                notes[len(out)] = note
            out.append(rec)
        if out:
            self._released_upto = max(self._released_upto, out[-1][0])
        self.last_comments = notes
        return out

    def _alert(self, level: str, kind: str, message: str) -> None:
        if self.on_event is not None:
            self.on_event("alert", {"level": level, "kind": kind, "message": message})


def _noted_ts(item: tuple[PacketRecord, str | None]) -> int:
    return item[0][0]


def protocol_lag_seconds() -> float:
    from kstap.remote.hub import WATERMARK_LAG_MS

    return WATERMARK_LAG_MS / 1000


def _frame_size(frame: protocol.Frame) -> int:
    body = frame.body
    if isinstance(body, protocol.Batch):
        return 64 + sum(r[1] + 64 for r in body.records)
    return 256


def _error_text(resp: Response) -> str:
    try:
        raw = resp.read()[:2000]
    except OSError:
        return "no details"
    try:
        obj = json.loads(raw)
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return str(obj["error"])[:300]
        if isinstance(obj, dict) and isinstance(obj.get("message"), str):
            return str(obj["message"])[:300]
    except ValueError:
        pass
    return raw.decode(errors="replace").strip()[:300] or "no details"
