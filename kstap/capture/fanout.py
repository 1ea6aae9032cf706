"""N capture processes on the same interfaces, joined by PACKET_FANOUT_HASH, merged in time order.

Each worker owns one TPACKET_V3 ring per interface in a per-interface fanout group, so the kernel's
symmetric flow hash puts both directions of a flow in one worker. Workers stream packed batches to
the parent over a pipe with a *watermark*: a time before which that worker will send nothing more.
The parent releases packets older than every live worker's watermark, which yields one
time-ordered stream without waiting for the end of the capture.

**A worker that dies** (SIGKILL, OOM kill, a crash) or stops answering for :data:`STALL_SECONDS`
(SIGSTOP, a hang; it is then killed) is *lost*: what it had already sent is kept and merged, the
packets still in its ring die with its socket, and the kernel spreads its share of the flows over
the surviving members of the fanout group at once. :meth:`FanoutSource.read` raises
:class:`WorkerLost` once per loss (the packets already received stay queued for the next call).
With ``restart=True`` the parent first starts a new process in the lost one's place (up to
:data:`MAX_RESTARTS` times per worker; it rejoins the same fanout group), so a caller that catches
``WorkerLost`` and reads on keeps capturing with every worker; with ``restart=False`` (the default)
the worker stays lost and the others go on. When every worker is lost for good, ``read`` raises
:class:`~kstap.errors.WorkerFailure`.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import struct
import sys
import time
from multiprocessing.connection import Connection, wait

from kstap.capture import netns
from kstap.capture.afpacket import AfPacketRing, AfPacketSource, RingConfig
from kstap.contracts import SourceCapabilities
from kstap.errors import KstapError, WorkerFailure
from kstap.filters.bpf import Program
from kstap.merge import TimeOrderedMerge
from kstap.model import Interface, PacketRecord, SourceStats

_MSG = struct.Struct("<cQI")  # kind, watermark ns, record count
_REC = struct.Struct("<QIIHH")  # ts, caplen, origlen, if id, worker
_STAT = struct.Struct("<QQQ")  # received, dropped, delivered (per interface)
SLACK_MS = 30
PR_SET_PDEATHSIG = 1
MAX_RESTARTS = 3
"""Restarts per worker: a worker killed more often than this is crash-looping (e.g. OOM-killed by a
memory limit it cannot live in), and restarting it again only loses more packets in new rings."""
STALL_SECONDS = 10.0
"""A live worker sends a message at least every 100 ms; silence this long (while the parent is
reading) means it is stopped or hung, and it is killed and handled as lost."""


class WorkerLost(WorkerFailure):
    """One capture worker was lost; if ``restarted``, a new process took its place and capture goes on."""

    def __init__(self, worker: int, how: str, restarted: bool, *, limit: bool = False) -> None:
        if restarted:
            again = "; restarted it"
        elif limit:
            again = f"; not restarted again (lost {MAX_RESTARTS + 1} times)"
        else:
            again = ""
        super().__init__(f"capture worker {worker} lost ({how}){again}",
                         hint="the packets in its ring at that moment were lost; what the workers delivered "
                              "before is in the file")
        self.worker = worker
        self.how = how
        self.restarted = restarted


def _pack(kind: bytes, watermark: int, records: list[PacketRecord], stats: list[SourceStats]) -> bytes:
    parts = [_MSG.pack(kind, watermark, len(records))]
    rec = _REC.pack
    for ts, caplen, origlen, data, ifid, worker in records:
        parts.append(rec(ts, caplen, origlen, ifid, worker))
        parts.append(data)
    parts.extend(_STAT.pack(s.received, s.dropped, s.delivered) for s in stats)
    return b"".join(parts)


def _unpack(buf: bytes, n_ifaces: int) -> tuple[bytes, int, list[PacketRecord], list[SourceStats]]:
    kind, wm, count = _MSG.unpack_from(buf)
    off = _MSG.size
    out: list[PacketRecord] = []
    rec = _REC.unpack_from
    size = _REC.size
    for _ in range(count):
        ts, caplen, origlen, ifid, worker = rec(buf, off)
        off += size
        out.append((ts, caplen, origlen, buf[off : off + caplen], ifid, worker))
        off += caplen
    stats = []
    for _ in range(n_ifaces):
        r, d, dl = _STAT.unpack_from(buf, off)
        off += _STAT.size
        stats.append(SourceStats(r, d, dl))
    return kind, wm, out, stats


def _worker_main(worker: int, names: list[str], program: Program, ring: RingConfig, group: int,
                 ns: str | None, conn: Connection, stop: mp.synchronize.Event,
                 control: Connection | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # also on a group-wide SIGTERM (timeout(1), systemd)
    # Die with the parent (even SIGKILLed): a forked worker holds the pipe's read end too, so
    # it would never see a broken pipe and would block on a full pipe forever.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = mp.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        return
    try:
        with netns.entered(ns):
            rings = [AfPacketRing(n, program, if_id=i, worker=worker, ring=ring,
                                  fanout_group=(group + i) & 0xFFFF) for i, n in enumerate(names)]
    except KstapError as exc:
        conn.send_bytes(b"X" + f"{type(exc).__name__}\0{exc.message}\0{exc.hint or ''}".encode())
        return
    except Exception:
        exc_type, exc_value = sys.exc_info()[:2]
        reason = f"{exc_type.__name__ if exc_type else 'error'}: {exc_value}".replace("\n", " ")
        conn.send_bytes(b"X" + f"WorkerFailure\0capture worker {worker} failed to start ({reason})\0"
                               "rerun with --debug, or with --workers 1".encode())
        return
    src = AfPacketSource(rings)
    lag = (ring.retire_ms + SLACK_MS) * 1_000_000
    conn.send_bytes(_pack(b"R", 0, [], [SourceStats() for _ in rings]))
    try:
        while not stop.is_set():
            if control is not None and control.poll():
                new = Program(program.expression, program.linktype, program.snaplen,
                              tuple((int(c), int(t), int(f), int(k)) for c, t, f, k in control.recv()))
                for r in rings:
                    r.set_filter(new)
            wm = time.time_ns() - lag
            recs = src.read(100)
            conn.send_bytes(_pack(b"P", wm, recs, src.stats()))
        recs = src.drain(ring.retire_ms)
        conn.send_bytes(_pack(b"E", 2**63, recs, src.stats()))
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        src.close()


class FanoutSource:
    """The parent's view: looks like one source, fed by N worker processes."""

    def __init__(self, names: list[str], program: Program, *, workers: int, ring: RingConfig,
                 ns: str | None, start_timeout: float = 10.0, restart: bool = False) -> None:
        self.restart = restart
        """Replace a lost worker with a new process (see the module docstring)."""
        self._ctx = mp.get_context("fork")
        self._stop = self._ctx.Event()
        self._names = names
        self._program = program
        self._ring = ring
        self._ns = ns
        self._group = (os.getpid() * 7) & 0xFFFF
        self._procs: dict[int, mp.process.BaseProcess] = {}
        self._conns: dict[Connection, int] = {}
        self._watermarks: dict[int, int] = {}
        self._stats: dict[int, list[SourceStats]] = {}
        self._merge: TimeOrderedMerge[PacketRecord] = TimeOrderedMerge(_ts)
        self._done: set[int] = set()
        self._last_seen: dict[int, float] = {}
        self._lost: list[WorkerLost] = []
        self._base: dict[int, list[SourceStats]] = {}
        self.per_worker_received: dict[int, int] = {}
        self._controls: dict[int, Connection] = {}
        self.restarts: dict[int, int] = {}
        """Worker → times it was restarted after being lost."""
        self.gone: dict[int, str] = {}
        """Workers lost for good (not restarted, restart limit reached, or a restart failed) → why."""
        self._stalled: set[int] = set()
        self.workers = workers
        for w in range(workers):
            self._spawn(w)
        self.interfaces = [Interface(n, program.linktype, program.snaplen, program.expression)
                           for n in names]
        self._await_ready(start_timeout)

    def _spawn(self, w: int) -> None:
        parent, child = self._ctx.Pipe(duplex=False)
        ctl_read, ctl_write = self._ctx.Pipe(duplex=False)
        p = self._ctx.Process(target=_worker_main, name=f"kstap-worker-{w}",
                              args=(w, self._names, self._program, self._ring, self._group, self._ns, child,
                                    self._stop, ctl_read), daemon=True)
        p.start()
        child.close()
        ctl_read.close()
        self._controls[w] = ctl_write
        self._procs[w] = p
        self._conns[parent] = w
        # a new worker's ring exists only after it starts: it cannot hold a packet older than now
        self._watermarks[w] = 0 if w not in self.restarts else time.time_ns()
        self._last_seen[w] = time.monotonic()

    def _await_ready(self, timeout: float) -> None:
        waiting = set(self._conns)
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise WorkerFailure("capture workers did not start in time",
                                    hint="check the system load and the kernel log")
            for c in wait(list(waiting), timeout=left):
                assert isinstance(c, Connection)
                try:
                    buf = c.recv_bytes()
                except EOFError:
                    self.close()
                    raise WorkerFailure(f"capture worker {self._conns[c]} exited while starting",
                                        hint="rerun with --debug; --workers 1 avoids the fanout group") from None
                if buf[:1] == b"X":
                    self.close()
                    raise _rebuild(buf[1:])
                waiting.discard(c)

    def read(self, timeout_ms: int) -> list[PacketRecord]:
        """Packets every live worker is past, in time order. Raises :class:`WorkerLost` once per lost
        worker (the packets it had sent stay queued for the next call)."""
        if self._lost:
            raise self._lost.pop(0)
        live = [c for c, w in self._conns.items() if w not in self._done]
        if live:
            for c in wait(live, timeout=timeout_ms / 1000):
                assert isinstance(c, Connection)
                self._receive(c)
            self._watch_stalls()
        if self._lost:
            raise self._lost.pop(0)
        if len(self.gone) == len(self._procs) and not self._stop.is_set():
            raise WorkerFailure("every capture worker was lost",
                                hint="see the kernel log (OOM kills?) and rerun with fewer --workers")
        return self._release()

    def _receive(self, c: Connection) -> None:
        w = self._conns[c]
        try:
            buf = c.recv_bytes()
        except (EOFError, OSError):
            self._worker_exited(c, w)
            return
        self._last_seen[w] = time.monotonic()
        if buf[:1] == b"X":  # a restarted worker could not open its rings
            self._retire(c, w)
            self.gone[w] = _rebuild(buf[1:]).message
            self._lost.append(WorkerLost(w, f"restart failed: {self.gone[w]}", False))
            return
        kind, wm, recs, stats = _unpack(buf, len(self._names))
        if kind == b"R":
            return
        self._stats[w] = _carry(stats, self._base.get(w))
        self._watermarks[w] = wm
        if kind == b"E":
            self._done.add(w)
        if recs:
            self._merge.add(recs)

    def _worker_exited(self, c: Connection, w: int) -> None:
        """A worker's pipe closed before its end message: it died. Restart it if asked to."""
        p = self._procs[w]
        p.join(timeout=1)
        how = f"no message for {STALL_SECONDS:g} s, killed" if w in self._stalled else _exit_reason(p.exitcode)
        self._stalled.discard(w)
        self._retire(c, w)
        if self._stop.is_set():
            self.gone[w] = how
            return
        if not self.restart or self.restarts.get(w, 0) >= MAX_RESTARTS:
            self.gone[w] = how
            self._lost.append(WorkerLost(w, how, False, limit=self.restart))
            return
        self.restarts[w] = self.restarts.get(w, 0) + 1
        # counters of a new socket start from zero: keep the dead one's as a base
        self._base[w] = list(self._stats.get(w, []))
        self._done.discard(w)
        self._spawn(w)
        self._lost.append(WorkerLost(w, how, True))

    def _retire(self, c: Connection, w: int) -> None:
        self._done.add(w)
        self._watermarks[w] = 2**63
        del self._conns[c]
        c.close()
        ctl = self._controls.pop(w, None)
        if ctl is not None:
            ctl.close()

    def _watch_stalls(self) -> None:
        """Kill a worker that has said nothing for STALL_SECONDS (stopped, hung); its EOF follows."""
        now = time.monotonic()
        for w, p in self._procs.items():
            if w in self._done or now - self._last_seen[w] < STALL_SECONDS or not p.is_alive():
                continue
            if p.pid is not None:
                self._stalled.add(w)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
            self._last_seen[w] = now  # its EOF arrives on the next wait

    def _release(self) -> list[PacketRecord]:
        if not self._merge:
            return []
        return self._merge.release(min(self._watermarks.values()))

    def drain(self, retire_ms: int) -> list[PacketRecord]:
        """Stop every worker, collect their last packets and final counters."""
        self._stop.set()
        deadline = time.monotonic() + 5.0
        out: list[PacketRecord] = []
        while len(self._done) < len(self._procs) and time.monotonic() < deadline:
            try:
                out.extend(self.read(100))
            except WorkerFailure:
                continue
        for w in self._procs:
            self._watermarks[w] = 2**63
        out.extend(self._release())
        return out

    capabilities = SourceCapabilities(live_filter=True)

    def set_filter(self, program: Program) -> None:
        """Swap every worker's kernel filter (applied within one poll interval, ~100 ms)."""
        for w, c in list(self._controls.items()):
            if w not in self._done:
                try:
                    c.send([list(i) for i in program.insns])
                except (BrokenPipeError, OSError):
                    continue

    def stats(self) -> list[SourceStats]:
        total = [SourceStats() for _ in self._names]
        for stats in self._stats.values():
            for t, s in zip(total, stats, strict=False):
                t.add(s)
        return total

    def close(self) -> None:
        self._stop.set()
        for p in self._procs.values():
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join(timeout=1)
        for c in self._conns:
            c.close()
        for c in self._controls.values():
            c.close()


def _ts(rec: PacketRecord) -> int:
    return rec[0]


def _carry(new: list[SourceStats], base: list[SourceStats] | None) -> list[SourceStats]:
    """A worker's counters, plus those its predecessors had reached (a restarted socket counts from 0)."""
    if not base:
        return new
    out = []
    for b, n in zip(base, new, strict=False):
        t = SourceStats(b.received, b.dropped, b.delivered)
        t.add(n)
        out.append(t)
    return out


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _rebuild(raw: bytes) -> KstapError:
    from kstap import errors

    kind, message, hint = [*raw.decode(errors="replace").split("\0"), "", ""][:3]
    cls = getattr(errors, kind, KstapError)
    if not (isinstance(cls, type) and issubclass(cls, KstapError)):
        cls = KstapError
    return cls(message, hint or None)
