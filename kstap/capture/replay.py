"""Offline source: a pcap/pcapng file through the same pipeline, at file speed or --realtime."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from kstap.contracts import SourceCapabilities
from kstap.errors import KstapError
from kstap.filters.bpf import Program, compile_filter
from kstap.formats.savefile import CaptureFormatError, CaptureReader, open_capture
from kstap.model import Interface, PacketRecord, SourceStats

BATCH = 512
PACE_SLACK = 1e-6
"""Seconds: a --realtime packet this close to its due time is due (float clocks)."""


class ReplaySource:
    """Reads a capture file in batches; applies the BPF filter in user space (libpcap's)."""

    capabilities = SourceCapabilities(finite=True)

    def __init__(
        self,
        path: str,
        expression: str,
        *,
        snaplen: int = 262144,
        realtime: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = path
        self._fh = open_capture(path, "--read")
        self.expression = expression
        self._snaplen = snaplen
        self._realtime = realtime
        self._clock = clock
        self._sleep = sleep
        self._programs: dict[int, Program | None] = {}
        self.error: CaptureFormatError | None = None
        self._stats = SourceStats()
        try:
            self.reader = CaptureReader(self._fh, path)
        except CaptureFormatError as exc:
            self._fh.close()
            raise KstapError(str(exc), hint="give a pcap or pcapng file to --read") from None
        self._iter: Iterator[tuple[PacketRecord, object]] = iter(self.reader)
        self._first: tuple[int, float] | None = None
        self._held: PacketRecord | None = None
        """A --realtime packet that was not due yet at the last read."""
        self.exhausted = False

    @property
    def interfaces(self) -> list[Interface]:
        """Interfaces seen so far, with the run's filter as theirs (snaplen as requested)."""
        return [Interface(i.name, i.linktype, min(i.snaplen or self._snaplen, self._snaplen),
                          self.expression, i.description) for i in self.reader.interfaces]

    def _program(self, if_id: int) -> Program | None:
        if if_id not in self._programs:
            if not self.expression:
                self._programs[if_id] = None
            else:
                link = self.reader.interfaces[if_id].linktype
                self._programs[if_id] = compile_filter(self.expression, linktype=link,
                                                       snaplen=self._snaplen)
        return self._programs[if_id]

    def read(self, timeout_ms: int = 0) -> list[PacketRecord]:
        """Up to BATCH packets that pass the filter; [] and ``exhausted`` at the end."""
        out: list[PacketRecord] = []
        snaplen = self._snaplen
        while len(out) < BATCH and not self.exhausted:
            if self._held is not None:
                rec, self._held = self._held, None
            else:
                try:
                    rec, _info = next(self._iter)
                except StopIteration:
                    self.exhausted = True
                    break
                except CaptureFormatError as exc:
                    self.error = exc
                    self.exhausted = True
                    break
                ts, caplen, origlen, data, if_id, worker = rec
                prog = self._program(if_id)
                if prog is not None and not prog.matches(data, origlen):
                    continue
                if caplen > snaplen:
                    data = data[:snaplen]
                    caplen = snaplen
                self._stats.received += 1
                rec = (ts, caplen, origlen, data, if_id, worker)
            if self._realtime:
                if self._pace(rec[0]):
                    out.append(rec)
                else:
                    self._held = rec
                break
            out.append(rec)
        self._stats.delivered += len(out)
        return out

    def _pace(self, ts: int) -> bool:
        """Sleep toward the packet's due time, at most a second per read (stop flags are checked
        between reads); True once it is due."""
        now = self._clock()
        if self._first is None:
            self._first = (ts, now)
            return True
        due = self._first[1] + (ts - self._first[0]) / 1e9
        if due - now > PACE_SLACK:
            self._sleep(min(due - now, 1.0))
            return due - self._clock() <= PACE_SLACK
        return True

    def drain(self, retire_ms: int) -> list[PacketRecord]:
        """Nothing is in flight in a file."""
        return []

    def stats(self) -> list[SourceStats]:
        per = [SourceStats() for _ in self.reader.interfaces] or [SourceStats()]
        per[0].received = self._stats.received
        per[0].delivered = self._stats.delivered
        return per

    def close(self) -> None:
        self._fh.close()
