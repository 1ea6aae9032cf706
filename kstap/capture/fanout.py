"""N capture processes on the same interfaces, joined by PACKET_FANOUT_HASH, merged in time order.

Each worker owns one TPACKET_V3 ring per interface in a per-interface fanout group, so the kernel's
symmetric flow hash puts both directions of a flow in one worker. Workers stream packed batches to
the parent over a pipe with a *watermark*: a time before which that worker will send nothing more.
The parent releases packets older than every live worker's watermark, which yields one
time-ordered stream without waiting for the end of the capture.
"""

from __future__ import annotations

import bisect
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
from kstap.errors import KstapError, WorkerFailure
from kstap.filters.bpf import Program
from kstap.model import Interface, PacketRecord, SourceStats

_MSG = struct.Struct("<cQI")  # kind, watermark ns, record count
_REC = struct.Struct("<QIIHH")  # ts, caplen, origlen, if id, worker
_STAT = struct.Struct("<QQQ")  # received, dropped, delivered (per interface)
SLACK_MS = 30
PR_SET_PDEATHSIG = 1


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
                 ns: str | None, start_timeout: float = 10.0) -> None:
        ctx = mp.get_context("fork")
        self._stop = ctx.Event()
        self._names = names
        group = (os.getpid() * 7) & 0xFFFF
        self._procs: list[mp.process.BaseProcess] = []
        self._conns: dict[Connection, int] = {}
        self._watermarks: dict[int, int] = {}
        self._stats: dict[int, list[SourceStats]] = {}
        self._pending: list[PacketRecord] = []
        self._done: set[int] = set()
        self.per_worker_received: dict[int, int] = {}
        self._controls: list[Connection] = []
        for w in range(workers):
            parent, child = ctx.Pipe(duplex=False)
            ctl_read, ctl_write = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker_main, name=f"kstap-worker-{w}",
                            args=(w, names, program, ring, group, ns, child, self._stop, ctl_read), daemon=True)
            p.start()
            child.close()
            ctl_read.close()
            self._controls.append(ctl_write)
            self._procs.append(p)
            self._conns[parent] = w
            self._watermarks[w] = 0
        self.interfaces = [Interface(n, program.linktype, program.snaplen, program.expression)
                           for n in names]
        self._await_ready(start_timeout)

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
                    raise WorkerFailure(f"capture worker {self._conns[c]} exited while starting") from None
                if buf[:1] == b"X":
                    self.close()
                    raise _rebuild(buf[1:])
                waiting.discard(c)

    def read(self, timeout_ms: int) -> list[PacketRecord]:
        live = [c for c, w in self._conns.items() if w not in self._done]
        if live:
            for c in wait(live, timeout=timeout_ms / 1000):
                assert isinstance(c, Connection)
                self._receive(c)
        return self._release()

    def _receive(self, c: Connection) -> None:
        w = self._conns[c]
        try:
            buf = c.recv_bytes()
        except (EOFError, OSError):
            self._done.add(w)
            self._watermarks[w] = 2**63
            raise WorkerFailure(f"capture worker {w} died (exit code {self._procs[w].exitcode})",
                                hint="the packets it had sent are kept; see the kernel log for OOM kills") from None
        kind, wm, recs, stats = _unpack(buf, len(self._names))
        self._stats[w] = stats
        self._watermarks[w] = wm
        if kind == b"E":
            self._done.add(w)
        if recs:
            self._pending.extend(recs)

    def _release(self) -> list[PacketRecord]:
        if not self._pending:
            return []
        floor = min(self._watermarks.values())
        self._pending.sort(key=_ts)
        cut = bisect.bisect_right(self._pending, floor, key=_ts)
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

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
        for w in range(len(self._procs)):
            self._watermarks[w] = 2**63
        out.extend(self._release())
        return out

    def set_filter(self, program: Program) -> None:
        """Swap every worker's kernel filter (applied within one poll interval, ~100 ms)."""
        for w, c in enumerate(self._controls):
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
        for p in self._procs:
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join(timeout=1)
        for c in self._conns:
            c.close()
        for c in self._controls:
            c.close()


def _ts(rec: PacketRecord) -> int:
    return rec[0]


def _rebuild(raw: bytes) -> KstapError:
    from kstap import errors

    kind, message, hint = [*raw.decode(errors="replace").split("\0"), "", ""][:3]
    cls = getattr(errors, kind, KstapError)
    if not (isinstance(cls, type) and issubclass(cls, KstapError)):
        cls = KstapError
    return cls(message, hint or None)
