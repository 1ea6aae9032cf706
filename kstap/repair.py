"""Recover a damaged pcap or pcapng file: copy every complete block, drop the partial tail.

A capture stopped by SIGKILL, a power cut or a full disk ends in the middle of a block (kstap
writes whole blocks, but the kernel may have written only part of the last ``write``). Readers
then stop with a warning ("cut short in the middle of a packet"). :func:`repair` copies the file
up to the end of its last complete, well-formed block and leaves out the rest. It appends nothing
that was not captured: no invented Interface Statistics Block (the counters died with the
process), no padding; it only says what it dropped.

What counts as a complete block:

- pcapng: the length field is ≥ 12, a multiple of 4 and ≤ :data:`MAX_BLOCK`; the trailing length
  matches; the whole block is in the file; the body is long enough for its type (an EPB's captured
  length fits, its interface was described, an SHB has a known byte order). A Section Header Block
  whose section length is set (kstap writes -1, "not given") gets -1 if the section was cut.
- pcap: the 24-byte file header, then records whose 16-byte header and captured bytes are all
  there and whose captured length is sane (≤ :data:`MAX_BLOCK`).

The first block that fails a check ends the copy: damage in the middle of a file (not a cut tail)
also stops there, and the report says so.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from kstap.errors import KstapError, UsageError
from kstap.file_writes import slice_for, write_all
from kstap.formats.pcapng import (
    BT_EPB,
    BT_IDB,
    BT_ISB,
    BT_PB,
    BT_SHB,
    BT_SPB,
    MAX_BLOCK,
    PCAP_MAGICS,
    Framing,
    FramingError,
    walk_blocks,
)
from kstap.private_file import open_private


@dataclass
class RepairReport:
    """What :func:`repair` found and did."""

    source: str
    output: str
    format: str
    """"pcap" or "pcapng"."""
    packets: int = 0
    """Packets in the complete blocks copied."""
    blocks: int = 0
    bytes_kept: int = 0
    bytes_dropped: int = 0
    reason: str | None = None
    """Why the copy stopped before the end of the file (None: the file was intact)."""
    statistics: bool = False
    """The copy holds at least one Interface Statistics Block (pcapng; kstap writes one at close)."""
    section_length_reset: bool = False

    @property
    def intact(self) -> bool:
        return self.bytes_dropped == 0 and self.reason is None


def default_output(path: str) -> str:
    """``cap.pcapng`` → ``cap.repaired.pcapng`` (beside the input, never over it)."""
    p = Path(path)
    suffix = p.suffix or ".pcapng"
    return str(p.with_name(f"{p.stem}.repaired{suffix}"))


def repair(path: str, output: str | None = None) -> RepairReport:
    """Write the complete blocks of ``path`` to ``output`` (created 0600); report what was dropped."""
    out = output or default_output(path)
    if os.path.abspath(out) == os.path.abspath(path):
        raise UsageError("the output must be another file than the one repaired", hint="give -o OUT")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UsageError(f"{path!r} does not exist", hint="give the path of a capture file") from None
    except IsADirectoryError:
        raise UsageError(f"{path!r} is a directory", hint="give the path of a capture file") from None
    except PermissionError:
        raise UsageError(f"cannot read {path!r}: permission denied",
                         hint="run as a user who may read it") from None
    report = scan(data, path, out)
    keep = data[: report.bytes_kept]
    if report.section_length_reset:
        keep = _reset_section_lengths(keep)
    try:
        fd = open_private(out)
    except OSError as exc:
        raise KstapError(f"cannot create {out!r}: {exc.strerror}", hint="pick another -o path") from None
    try:
        write_all(fd, keep, slice_for(fd))
    except OSError as exc:
        raise KstapError(f"writing {out!r} failed: {exc.strerror}", hint="free space or pick another -o path") from None
    finally:
        os.close(fd)
    return report


def scan(data: bytes, source: str = "<data>", output: str = "") -> RepairReport:
    """Where the last complete block of ``data`` ends, and why the rest (if any) is not one."""
    if len(data) < 4:
        raise KstapError(f"{source!r} is not a pcap or pcapng file ({len(data)} bytes)",
                         hint="nothing to recover: the file holds no complete header")
    le, be = struct.unpack_from("<I", data)[0], struct.unpack_from(">I", data)[0]
    if le == BT_SHB:
        return _scan_pcapng(data, RepairReport(source, output, "pcapng"))
    if le in PCAP_MAGICS or be in PCAP_MAGICS:
        return _scan_pcap(data, RepairReport(source, output, "pcap"), "<" if le in PCAP_MAGICS else ">")
    raise KstapError(f"{source!r} is not a pcap or pcapng file (magic {data[:4].hex()})",
                     hint="kstap repair reads pcap and pcapng only")


def _scan_pcap(data: bytes, r: RepairReport, e: str) -> RepairReport:
    if len(data) < 24:
        raise KstapError(f"{r.source!r}: the pcap file header is cut short ({len(data)} of 24 bytes)",
                         hint="nothing to recover")
    pos = 24
    while pos < len(data):
        if len(data) - pos < 16:
            r.reason = f"a packet record header cut short after {r.packets} packets"
            break
        caplen = struct.unpack_from(e + "I", data, pos + 8)[0]
        if caplen > MAX_BLOCK:
            r.reason = f"a corrupt packet record (captured length {caplen}) after {r.packets} packets"
            break
        if pos + 16 + caplen > len(data):
            r.reason = f"a packet cut short after {r.packets} packets"
            break
        pos += 16 + caplen
        r.packets += 1
        r.blocks += 1
    r.bytes_kept = pos
    r.bytes_dropped = len(data) - pos
    return r


def _scan_pcapng(data: bytes, r: RepairReport) -> RepairReport:
    pos = 0
    interfaces = 0
    section_start = 0
    section_length = -1
    try:
        for btype, e, length, body, pos in walk_blocks(io.BytesIO(data)):
            problem = _check_body(btype, body, e, interfaces)
            if problem:
                r.reason = f"{problem} after {r.packets} packets"
                break
            if btype == BT_SHB:
                if section_length >= 0 and pos - section_start != section_length:
                    r.section_length_reset = True
                interfaces, section_start = 0, pos + length
                section_length = struct.unpack_from(e + "q", body, 8)[0]
            elif btype == BT_IDB:
                interfaces += 1
            elif btype in (BT_EPB, BT_SPB, BT_PB):
                r.packets += 1
            elif btype == BT_ISB:
                r.statistics = True
            r.blocks += 1
        else:
            pos = len(data)
    except FramingError as exc:
        pos = exc.offset
        r.reason = _framing(exc, len(data) - pos, r.packets)
    if section_length >= 0 and pos - section_start != section_length:
        r.section_length_reset = True
    r.bytes_kept = pos
    r.bytes_dropped = len(data) - pos
    if r.blocks == 0:
        raise KstapError(f"{r.source!r}: not even the section header is complete ({r.reason})",
                         hint="nothing to recover")
    return r


def _framing(exc: FramingError, left: int, packets: int) -> str:
    """Why the block at ``exc.offset`` (``left`` bytes before the end of the file) is not whole."""
    after = f"after {packets} packets"
    if left < 12:
        return f"a block header cut short {after}"
    if exc.btype == BT_SHB and left < 28:
        return f"a section header cut short {after}"
    if exc.problem is Framing.BAD_MAGIC:
        return f"a section header with a bad byte-order magic {after}"
    if exc.problem is Framing.BAD_LENGTH:
        return f"a corrupt block (length {exc.length}) {after}"
    if exc.problem is Framing.CUT:
        return f"a block cut short {after} ({exc.have} of its {exc.length} bytes)"
    return f"a corrupt block (its two length fields differ) {after}"


def _check_body(btype: int, body: bytes, e: str, interfaces: int) -> str | None:
    """Why a framed block's body cannot be what its type says (None when it can)."""
    if btype == BT_SHB:
        return None if len(body) >= 16 else "a section header too short"
    if btype == BT_IDB:
        return None if len(body) >= 8 else "an interface description too short"
    if btype == BT_EPB:
        if len(body) < 20:
            return "a packet block too short"
        if_id, _, _, caplen = struct.unpack_from(e + "IIII", body)
        if 20 + caplen > len(body):
            return f"a packet block whose captured length ({caplen}) overruns it"
        if if_id >= interfaces:
            return f"a packet on interface {if_id}, which the file does not describe"
        return None
    if btype == BT_PB:
        if len(body) < 20:
            return "a packet block too short"
        if_id = struct.unpack_from(e + "H", body)[0]
        caplen = struct.unpack_from(e + "I", body, 12)[0]
        if 20 + caplen > len(body) or if_id >= interfaces:
            return "a corrupt (obsolete) packet block"
        return None
    if btype == BT_SPB:
        if len(body) < 4 or not interfaces:
            return "a corrupt simple packet block"
        return None
    if btype == BT_ISB:
        if len(body) < 12:
            return "a statistics block too short"
        if struct.unpack_from(e + "I", body)[0] >= interfaces:
            return "statistics for an interface the file does not describe"
        return None
    return None  # other block types (name resolution, custom, …) are copied as they are


def _reset_section_lengths(data: bytes) -> bytes:
    """Set every SHB's section length to -1 ("not given"): a cut section's length is wrong."""
    out = bytearray(data)
    for btype, e, _length, _body, pos in walk_blocks(io.BytesIO(data)):  # whole blocks: what scan kept
        if btype == BT_SHB:
            struct.pack_into(e + "q", out, pos + 16, -1)
    return bytes(out)
