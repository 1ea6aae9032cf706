"""pcapng block encoding (draft-ietf-opsawg-pcapng), little-endian sections.

Pure functions from values to bytes; :mod:`kstap.sinks.files` decides where they go. The EPB
encoder is the hot path: one ``struct.pack`` and one join per packet.
"""

from __future__ import annotations

import platform
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import BinaryIO

from kstap import __version__
from kstap.model import Interface, PacketRecord

BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
BT_EPB = 0x00000006
BT_ISB = 0x00000005
BT_SPB = 0x00000003
BT_PB = 0x00000002
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_HARDWARE = 2
SHB_OS = 3
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
IF_FILTER = 11
IF_OS = 12
EPB_FLAGS = 2
EPB_DROPCOUNT = 4
EPB_QUEUE = 6
ISB_STARTTIME = 2
ISB_ENDTIME = 3
ISB_IFRECV = 4
ISB_IFDROP = 5
ISB_FILTERACCEPT = 6
ISB_OSDROP = 7
ISB_USRDELIV = 8

MAX_BLOCK = 256 << 20
"""The largest block (or pcap record) a reader or repair takes as sane (bytes)."""
PCAP_MAGICS = (0xA1B2C3D4, 0xA1B23C4D)
"""Classic pcap's magic numbers (microsecond, nanosecond timestamps), in the file's byte order."""

_EPB_HEAD = struct.Struct("<IIIIIII")  # type, total length, if id, ts high, ts low, caplen, origlen
_U32 = struct.Struct("<I")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


def option(code: int, value: bytes) -> bytes:
    """One option: code, length, value padded to 32 bits."""
    return struct.pack("<HH", code, len(value)) + value + _PAD[len(value) % 4]


def _options(opts: Iterable[bytes]) -> bytes:
    body = b"".join(opts)
    return body + option(OPT_ENDOFOPT, b"") if body else b""


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + _U32.pack(total)


def section_header(*, comment: str = "", application: str | None = None) -> bytes:
    """SHB naming the tool, the OS and the hardware, as dumpcap does."""
    app = application or f"kstap {__version__}"
    opts = [
        option(SHB_HARDWARE, platform.machine().encode()),
        option(SHB_OS, f"{platform.system()} {platform.release()}".encode()),
        option(SHB_USERAPPL, app.encode()),
    ]
    if comment:
        opts.insert(0, option(OPT_COMMENT, comment.encode()))
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _options(opts)
    return _block(BT_SHB, body)


def interface_description(iface: Interface, *, comment: str = "") -> bytes:
    """IDB with if_name, if_filter (libpcap expression), nanosecond if_tsresol."""
    opts = [option(IF_NAME, iface.name.encode()), option(IF_TSRESOL, bytes([9]))]
    if iface.description:
        opts.append(option(IF_DESCRIPTION, iface.description.encode()))
    if iface.filter:
        opts.append(option(IF_FILTER, b"\0" + iface.filter.encode()))
    opts.append(option(IF_OS, f"{platform.system()} {platform.release()}".encode()))
    if comment:
        opts.append(option(OPT_COMMENT, comment.encode()))
    body = struct.pack("<HHI", iface.linktype, 0, iface.snaplen) + _options(opts)
    return _block(BT_IDB, body)


def enhanced_packets(records: Sequence[PacketRecord], *, with_queue: bool = False,
                     comments: Mapping[int, str] | None = None) -> list[bytes]:
    """EPBs for ``records``; the interface id is the record's own. Returns pieces to join.

    ``comments`` maps a record's index in ``records`` to an ``opt_comment`` for that packet
    (Wireshark shows it as ``frame.comment``).
    """
    if comments:
        return _with_comments(records, with_queue, comments)
    out: list[bytes] = []
    append = out.append
    head = _EPB_HEAD.pack
    u32 = _U32.pack
    pad = _PAD
    for ts, caplen, origlen, data, ifid, worker in records:
        padding = pad[caplen & 3]
        if with_queue:
            opts = struct.pack("<HHIHH", EPB_QUEUE, 4, worker, 0, 0)
            total = 32 + caplen + len(padding) + 12
            append(head(BT_EPB, total, ifid, ts >> 32, ts & 0xFFFFFFFF, caplen, origlen))
            append(data)
            append(padding + opts + u32(total))
        else:
            total = 32 + caplen + len(padding)
            append(head(BT_EPB, total, ifid, ts >> 32, ts & 0xFFFFFFFF, caplen, origlen))
            append(data)
            append(padding + u32(total))
    return out


def _with_comments(records: Sequence[PacketRecord], with_queue: bool, comments: Mapping[int, str]) -> list[bytes]:
    out: list[bytes] = []
    for i, rec in enumerate(records):
        text = comments.get(i)
        if text is None:
            out.extend(enhanced_packets([rec], with_queue=with_queue))
            continue
        ts, caplen, origlen, data, ifid, worker = rec
        opts = [option(OPT_COMMENT, text.encode())]
        if with_queue:
            opts.append(option(EPB_QUEUE, _U32.pack(worker)))
        body = _EPB_HEAD.pack(0, 0, ifid, ts >> 32, ts & 0xFFFFFFFF, caplen, origlen)[8:]
        out.append(_block(BT_EPB, body + data + _PAD[caplen & 3] + _options(opts)))
    return out


def comment_first_at(chunks: list[bytes | memoryview], when_ns: int, text: str) -> bool:
    """Put ``text`` in the comment of the first EPB in ``chunks`` (EPB bytes as the C encoders write
    them, nanosecond stamps) stamped at or after ``when_ns``; an EPB with a comment already (a flow
    comment) gets ``text; its comment``, as the records path joins them (one comment: the worker
    stream carries one per packet). False when no EPB is that late. A Python step per EPB walked: for
    rare notes (an interface that came or went), not for every batch."""
    for index, chunk in enumerate(chunks):
        off, end = 0, len(chunk)
        while off + 32 <= end:
            kind, total, _ifid, hi, lo, caplen, _orig = _EPB_HEAD.unpack_from(chunk, off)
            if total < 32 or off + total > end:
                return False
            if kind == BT_EPB and (hi << 32 | lo) >= when_ns:
                data_end = off + 28 + ((caplen + 3) & ~3)
                chunks[index] = b"".join((chunk[:off], _block(BT_EPB, bytes(chunk[off + 8 : data_end]) + _joined(
                    bytes(chunk[data_end : off + total - 4]), text)), chunk[off + total :]))
                return True
            off += total
    return False


def _joined(options: bytes, text: str) -> bytes:
    """EPB options with ``text`` in front of the first comment (or as a new one)."""
    others: list[bytes] = []
    comment = text.encode()
    joined = False
    for code, value in read_options(options):
        if code == OPT_COMMENT and not joined:
            comment, joined = comment + b"; " + value, True
        else:
            others.append(option(code, value))
    return _options([option(OPT_COMMENT, comment), *others])


@dataclass(frozen=True)
class InterfaceCounters:
    """What an ISB reports for one interface. Counts run from the start of the capture (the
    pcapng spec's definition), so every rotated file's ISB is cumulative; ``delivered`` counts
    the packets written since the start too."""

    start_ns: int
    end_ns: int
    received: int
    dropped: int
    delivered: int
    comment: str = ""
    """The ISB's comment: rate changes no packet carried (see Sampler.unwritten_rate_notes), what
    ``-i any`` dedup removed, interfaces that came and went."""


def _u64(code: int, value: int) -> bytes:
    """A counter option: a plain uint64 in the section's byte order (the spec's isb_ifrecv, …).

    Older kstap files have them high 32 bits first, as for timestamps (other readers see such a count
    n as n * 2^32); :func:`kstap.formats.savefile.isb_counter` still reads those right."""
    return option(code, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))


def _ts64(code: int, ts_ns: int) -> bytes:
    """A timestamp option: high 32 bits first, then low (isb_starttime/isb_endtime, like EPB times)."""
    return option(code, struct.pack("<II", ts_ns >> 32, ts_ns & 0xFFFFFFFF))


def interface_statistics(if_id: int, counters: InterfaceCounters, *, comment: str = "") -> bytes:
    """ISB: received (kernel filter accepts), kernel drops, filter accepts, OS drops, delivered.

    As dumpcap does, ``isb_ifrecv`` and ``isb_filteraccept`` both carry the packets the kernel
    filter accepted and ``isb_ifdrop``/``isb_osdrop`` both carry the kernel's ring drops: on
    AF_PACKET the kernel reports no other figures.
    """
    ts = counters.end_ns
    opts = [
        _ts64(ISB_STARTTIME, counters.start_ns),
        _ts64(ISB_ENDTIME, counters.end_ns),
        _u64(ISB_IFRECV, counters.received),
        _u64(ISB_IFDROP, counters.dropped),
        _u64(ISB_FILTERACCEPT, counters.received),
        _u64(ISB_OSDROP, counters.dropped),
        _u64(ISB_USRDELIV, counters.delivered),
    ]
    if comment:
        opts.insert(0, option(OPT_COMMENT, comment.encode()))
    body = struct.pack("<III", if_id, ts >> 32, ts & 0xFFFFFFFF) + _options(opts)
    return _block(BT_ISB, body)


# -- reading -----------------------------------------------------------------------------------------
class Framing(Enum):
    """Why :func:`walk_blocks` found no whole block where one should start."""

    HEADER_CUT = "fewer than 8 bytes of a block header"
    SECTION_CUT = "a section header without its byte-order magic"
    BAD_MAGIC = "a section header whose byte-order magic is neither order"
    BAD_LENGTH = "a length field below the type's minimum, not a multiple of 4, or above MAX_BLOCK"
    CUT = "the file ends inside the block"
    LENGTHS_DIFFER = "the leading and trailing length fields differ"


class FramingError(Exception):
    """The walk stopped at ``offset`` (the start of the block that is not whole): ``problem`` says why;
    ``btype``/``length`` are what the block's header said (0 when not read), ``have`` how many of its
    bytes the file holds (for :attr:`Framing.CUT`)."""

    def __init__(self, problem: Framing, offset: int, btype: int = 0, length: int = 0, have: int = 0) -> None:
        super().__init__(problem.value)
        self.problem, self.offset, self.btype, self.length, self.have = problem, offset, btype, length, have


Block = tuple[int, str, int, bytes, int]
"""(block type, the section's byte order ``<``/``>``, total length, body, offset of the block).
The body is what lies between the 8-byte header and the trailing length (an SHB's starts with its
byte-order magic)."""


def walk_blocks(stream: BinaryIO, prefix: bytes = b"", offset: int = 0) -> Iterator[Block]:
    """The whole blocks of a pcapng stream, in order, each framed and checked (the one block walker of
    the capture-file reader and repair): the byte order is taken from each section header; a length
    field must be at least 12 (16 for a section header), a multiple of 4 and at most
    :data:`MAX_BLOCK`, and agree with the trailing one. Ends at a clean end of the stream; raises
    :class:`FramingError` at the first block that is not whole. ``prefix``: bytes already read from
    the stream (a sniffed magic)."""
    read = stream.read
    endian = "<"
    unpack = struct.unpack_from
    while True:
        head = prefix + read(8 - len(prefix))
        prefix = b""
        if not head:
            return
        if len(head) < 8:
            raise FramingError(Framing.HEADER_CUT, offset, have=len(head))
        btype = unpack(endian + "I", head)[0]
        fixed = 12
        bom = b""
        if btype == BT_SHB:
            bom = read(4)
            if len(bom) < 4:
                raise FramingError(Framing.SECTION_CUT, offset, btype, have=8 + len(bom))
            if unpack("<I", bom)[0] == BYTE_ORDER_MAGIC:
                endian = "<"
            elif unpack(">I", bom)[0] == BYTE_ORDER_MAGIC:
                endian = ">"
            else:
                raise FramingError(Framing.BAD_MAGIC, offset, btype)
            fixed = 16
        length = unpack(endian + "I", head, 4)[0]
        if length < fixed or length % 4 or length > MAX_BLOCK:
            raise FramingError(Framing.BAD_LENGTH, offset, btype, length)
        want = length - fixed
        body = read(want)
        trailer = read(4)
        if len(body) < want or len(trailer) < 4:
            raise FramingError(Framing.CUT, offset, btype, length, fixed - 4 + len(body) + len(trailer))
        if unpack(endian + "I", trailer)[0] != length:
            raise FramingError(Framing.LENGTHS_DIFFER, offset, btype, length)
        yield btype, endian, length, bom + body if bom else body, offset
        offset += length


def read_options(raw: bytes, endian: str = "<") -> Iterator[tuple[int, bytes]]:
    """The (code, value) options of a block's option area, up to ``opt_endofopt`` or its end."""
    pos = 0
    while pos + 4 <= len(raw):
        code, length = struct.unpack_from(endian + "HH", raw, pos)
        if code == OPT_ENDOFOPT:
            return
        yield code, raw[pos + 4 : pos + 4 + length]
        pos += 4 + length + (-length % 4)


def decode_epbs(data: bytes) -> tuple[list[PacketRecord], dict[int, str]]:
    """Little-endian EPBs (as :func:`enhanced_packets` and the C encoder write them) back into
    records and their comments (keyed by index); stops at the first block that is not a whole EPB."""
    records: list[PacketRecord] = []
    comments: dict[int, str] = {}
    pos, end = 0, len(data)
    while pos + 32 <= end:
        btype, total, ifid, hi, lo, caplen, origlen = _EPB_HEAD.unpack_from(data, pos)
        if btype != BT_EPB or total < 32 or pos + total > end:
            break
        start = pos + 28
        for code, value in read_options(data[start + caplen + (-caplen % 4) : pos + total - 4]):
            if code == OPT_COMMENT:
                comments[len(records)] = value.decode("utf-8", "replace")
        records.append(((hi << 32) | lo, caplen, origlen, data[start : start + caplen], ifid, 0))
        pos += total
    return records, comments
