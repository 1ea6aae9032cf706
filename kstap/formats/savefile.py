"""Read pcap and pcapng files: the packets, the interfaces, and where a file stops making sense.

Hand-written rather than dpkt's readers because kstap needs what they drop: every IDB with its
own if_tsresol (merged captures have several interfaces), EPB options (worker queue, comments),
ISBs, and a precise account of a truncated or corrupt tail so ``--read`` can keep what is valid.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from kstap.errors import UsageError
from kstap.formats import pcapng
from kstap.model import Interface, PacketRecord

PCAP_MAGIC_US, PCAP_MAGIC_NS = pcapng.PCAP_MAGICS
MAX_BLOCK = pcapng.MAX_BLOCK


class CaptureFormatError(Exception):
    """The file is not a capture, or stops being one; ``packets_ok`` were read before that."""

    def __init__(self, message: str, packets_ok: int = 0) -> None:
        super().__init__(message)
        self.packets_ok = packets_ok


@dataclass
class PacketInfo:
    """Extra per-packet data from pcapng options."""

    queue: int | None = None
    comments: list[str] = field(default_factory=list)


@dataclass
class Statistics:
    """One ISB's counters (None where absent)."""

    if_id: int
    received: int | None = None
    dropped: int | None = None
    filter_accept: int | None = None
    os_drop: int | None = None
    delivered: int | None = None
    time_ns: int = 0
    """The block's timestamp (when the counts were taken), epoch ns."""
    comments: list[str] = field(default_factory=list)


def isb_counter(value: bytes, endian: str, by_kstap: bool = False) -> int:
    """An ISB counter option's value: a plain uint64 in the section's byte order (pcapng spec).

    Back-compatibility: kstap once wrote counters high 32 bits first (two uint32s, as timestamps are
    written), so its count n < 2^32 reads as n * 2^32. In a section kstap wrote (``by_kstap``: its
    shb_userappl starts with "kstap "), a value whose low 32 bits are zero and high ones are not is
    taken for that old layout. A file kstap writes now is misread only with a count that is an exact
    multiple of 2^32; an old file only with a count of 2^32 or more. Other tools' files are read as
    the spec says, always.
    """
    n: int = struct.unpack(endian + "Q", value)[0]
    if by_kstap and n > 0xFFFFFFFF and not n & 0xFFFFFFFF:
        return n >> 32
    return n


@dataclass
class _Iface:
    info: Interface
    ts_mul: int = 1000  # ticks → ns multiplier (µs default)
    ts_div: int = 1


class CaptureReader:
    """Iterate the packets of a pcap or pcapng file. ``interfaces`` and ``statistics`` fill in."""

    def __init__(self, stream: BinaryIO, name: str = "<stream>") -> None:
        self.stream = stream
        self.name = name
        self.interfaces: list[Interface] = []
        self.statistics: list[Statistics] = []
        self.shb_comments: list[str] = []
        self.application = ""
        """The section's shb_userappl (which tool wrote it)."""
        self.packets = 0
        self._ifaces: list[_Iface] = []
        head = stream.read(4)
        if len(head) < 4:
            raise CaptureFormatError(f"{name}: empty or not a capture file")
        magic_le = struct.unpack("<I", head)[0]
        magic_be = struct.unpack(">I", head)[0]
        if magic_le == pcapng.BT_SHB:
            self.format = "pcapng"
            self._prefix = head
        elif magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) or magic_be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            self.format = "pcap"
            self._endian = "<" if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
            nano = (magic_le if self._endian == "<" else magic_be) == PCAP_MAGIC_NS
            rest = stream.read(20)
            if len(rest) < 20:
                raise CaptureFormatError(f"{name}: truncated pcap file header")
            _vmaj, _vmin, _tz, _sig, snaplen, linktype = struct.unpack(self._endian + "HHiIII", rest)
            iface = Interface(name="pcap", linktype=linktype & 0xFFFF, snaplen=snaplen)
            self._ifaces.append(_Iface(iface, 1 if nano else 1000))
            self.interfaces.append(iface)
        else:
            raise CaptureFormatError(f"{name}: not a pcap or pcapng file (magic {head.hex()})")

    def __iter__(self) -> Iterator[tuple[PacketRecord, PacketInfo | None]]:
        if self.format == "pcap":
            yield from self._pcap()
        else:
            yield from self._pcapng()

    # -- classic pcap ----------------------------------------------------------------------------
    def _pcap(self) -> Iterator[tuple[PacketRecord, PacketInfo | None]]:
        hdr = struct.Struct(self._endian + "IIII")
        mul = self._ifaces[0].ts_mul
        read = self.stream.read
        while True:
            raw = read(16)
            if not raw:
                return
            if len(raw) < 16:
                raise CaptureFormatError(f"{self.name}: truncated packet header after "
                                         f"{self.packets} packets", self.packets)
            sec, frac, caplen, origlen = hdr.unpack(raw)
            if caplen > MAX_BLOCK:
                raise CaptureFormatError(f"{self.name}: corrupt packet record after {self.packets} "
                                         f"packets (captured length {caplen})", self.packets)
            data = read(caplen)
            if len(data) < caplen:
                raise CaptureFormatError(f"{self.name}: truncated packet data after "
                                         f"{self.packets} packets", self.packets)
            self.packets += 1
            yield (sec * 1_000_000_000 + frac * mul, caplen, origlen, data, 0, 0), None

    # -- pcapng ----------------------------------------------------------------------------------
    def _pcapng(self) -> Iterator[tuple[PacketRecord, PacketInfo | None]]:
        blocks = pcapng.walk_blocks(self.stream, self._prefix)
        while True:
            try:
                btype, endian, length, body, _ = next(blocks)
            except StopIteration:
                return
            except pcapng.FramingError as exc:
                raise self._framing(exc) from None
            try:
                if btype == pcapng.BT_EPB:
                    yield self._epb(body, endian)
                elif btype == pcapng.BT_IDB:
                    self._idb(body, endian)
                elif btype == pcapng.BT_SPB:
                    yield self._spb(body, endian, length)
                elif btype == pcapng.BT_PB:
                    yield self._pb(body, endian)
                elif btype == pcapng.BT_ISB:
                    self._isb(body, endian)
                elif btype == pcapng.BT_SHB:
                    self._ifaces = []
                    self.interfaces = []
                    self._section(body, endian)
                # other block types (NRB, DSB, custom) are skipped
            except struct.error:
                raise CaptureFormatError(f"{self.name}: corrupt block (type {btype:#x}, too short) after "
                                         f"{self.packets} packets", self.packets) from None

    def _framing(self, exc: pcapng.FramingError) -> CaptureFormatError:
        """What the reader says where the block walk stopped."""
        n, F = self.packets, pcapng.Framing
        what = {F.HEADER_CUT: f"truncated block header after {n} packets",
                F.SECTION_CUT: "truncated section header",
                F.BAD_MAGIC: "bad byte-order magic",
                F.BAD_LENGTH: f"corrupt block (length {exc.length}) after {n} packets",
                F.CUT: f"truncated block after {n} packets (file cut short)",
                F.LENGTHS_DIFFER: f"corrupt block (length fields disagree) after {n} packets"}[exc.problem]
        return CaptureFormatError(f"{self.name}: {what}", n)

    _options = staticmethod(pcapng.read_options)

    def _section(self, body: bytes, endian: str) -> None:
        options = list(self._options(body[16:], endian))
        self.shb_comments = [v.decode(errors="replace") for c, v in options if c == pcapng.OPT_COMMENT]
        self.application = next((v.decode(errors="replace") for c, v in options if c == pcapng.SHB_USERAPPL), "")

    def _idb(self, body: bytes, endian: str) -> None:
        linktype, _, snaplen = struct.unpack_from(endian + "HHI", body)
        name, filt, desc = "", "", ""
        mul, div = 1000, 1
        for code, value in self._options(body[8:], endian):
            if code == pcapng.IF_NAME:
                name = value.decode(errors="replace")
            elif code == pcapng.IF_DESCRIPTION:
                desc = value.decode(errors="replace")
            elif code == pcapng.IF_FILTER and value:
                filt = value[1:].decode(errors="replace")
            elif code == pcapng.IF_TSRESOL and value:
                r = value[0]
                if r & 0x80:
                    mul, div = 1_000_000_000, 1 << (r & 0x7F)
                elif r <= 9:
                    mul, div = 10 ** (9 - r), 1
                else:
                    mul, div = 1, 10 ** (r - 9)
        iface = Interface(name or f"if{len(self._ifaces)}", linktype, snaplen, filt, desc)
        self._ifaces.append(_Iface(iface, mul, div))
        self.interfaces.append(iface)

    def _iface(self, if_id: int) -> _Iface:
        if if_id >= len(self._ifaces):
            raise CaptureFormatError(f"{self.name}: packet names interface {if_id}, which the file "
                                     f"does not describe", self.packets)
        return self._ifaces[if_id]

    def _epb(self, body: bytes, endian: str) -> tuple[PacketRecord, PacketInfo | None]:
        if len(body) < 20:
            raise CaptureFormatError(f"{self.name}: corrupt packet block", self.packets)
        if_id, hi, lo, caplen, origlen = struct.unpack_from(endian + "IIIII", body)
        if 20 + caplen > len(body):
            raise CaptureFormatError(f"{self.name}: corrupt packet block (captured length {caplen})",
                                     self.packets)
        iface = self._iface(if_id)
        ticks = (hi << 32) | lo
        ts = ticks * iface.ts_mul // iface.ts_div
        data = body[20 : 20 + caplen]
        info = None
        opt_start = 20 + caplen + (-caplen % 4)
        if opt_start < len(body):
            info = PacketInfo()
            for code, value in self._options(body[opt_start:], endian):
                if code == pcapng.EPB_QUEUE and len(value) == 4:
                    info.queue = struct.unpack(endian + "I", value)[0]
                elif code == pcapng.OPT_COMMENT:
                    info.comments.append(value.decode(errors="replace"))
        self.packets += 1
        return (ts, caplen, origlen, data, if_id, info.queue or 0 if info else 0), info

    def _spb(self, body: bytes, endian: str, length: int) -> tuple[PacketRecord, PacketInfo | None]:
        (origlen,) = struct.unpack_from(endian + "I", body)
        iface = self._iface(0)
        caplen = min(origlen, iface.info.snaplen or origlen, len(body) - 4)
        self.packets += 1
        return (0, caplen, origlen, body[4 : 4 + caplen], 0, 0), None

    def _pb(self, body: bytes, endian: str) -> tuple[PacketRecord, PacketInfo | None]:
        if_id, _drops, hi, lo, caplen, origlen = struct.unpack_from(endian + "HHIIII", body)
        if 20 + caplen > len(body):
            raise CaptureFormatError(f"{self.name}: corrupt packet block (captured length {caplen})",
                                     self.packets)
        iface = self._iface(if_id)
        ts = ((hi << 32) | lo) * iface.ts_mul // iface.ts_div
        self.packets += 1
        return (ts, caplen, origlen, body[20 : 20 + caplen], if_id, 0), None

    def _isb(self, body: bytes, endian: str) -> None:
        if_id, hi, lo = struct.unpack_from(endian + "III", body)
        iface = self._ifaces[if_id] if if_id < len(self._ifaces) else _Iface(Interface(""))
        st = Statistics(if_id, time_ns=((hi << 32) | lo) * iface.ts_mul // iface.ts_div)
        names = {pcapng.ISB_IFRECV: "received", pcapng.ISB_IFDROP: "dropped",
                 pcapng.ISB_FILTERACCEPT: "filter_accept", pcapng.ISB_OSDROP: "os_drop",
                 pcapng.ISB_USRDELIV: "delivered"}
        by_kstap = self.application.startswith("kstap ")
        for code, value in self._options(body[12:], endian):
            if code in names and len(value) == 8:
                setattr(st, names[code], isb_counter(value, endian, by_kstap))
            elif code == pcapng.OPT_COMMENT:
                st.comments.append(value.decode(errors="replace"))
        self.statistics.append(st)


def open_capture(path: str, option: str) -> BinaryIO:
    """``path`` opened for reading, ``-`` = standard input (as ``tcpdump -r -``); usage errors name ``option``."""
    if path == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError(f"{option} - reads a capture from standard input, but it is a terminal",
                             hint="pipe one in: kstap tap -i IFACE -w - | kstap dissect -")
        return os.fdopen(os.dup(sys.stdin.fileno()), "rb")
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UsageError(f"cannot read {path!r}: no such file",
                         hint=f"give a pcap or pcapng file to {option}, or - for standard input") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path!r}: {exc.strerror}",
                         hint=f"give a readable pcap or pcapng file to {option}") from None
