"""pcapng output files: one file, stdout, or a rotated ring of files.

Blocks are written whole (a regular file in 4 or 64 KiB writes, whichever costs less here:
:mod:`kstap.file_writes` says why);
when the disk fills up the file is cut back to its last complete block, so what is on disk always
reads cleanly. Files are created 0600: captures hold other people's traffic (an existing file is
narrowed to 0600, another user's is refused; see :mod:`kstap.private_file`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kstap.contracts import EpbChunk, SinkCapabilities
from kstap.errors import KstapError, OutputClosed, OutputFailed, UsageError, describe_os_error
from kstap.file_writes import SliceChooser, slice_for, write_all
from kstap.formats import pcapng
from kstap.model import Interface, PacketRecord
from kstap.private_file import check_target, open_private

__all__ = ["DiskFull", "OutputClosed", "PcapngFiles", "check_not_input", "check_writable", "rotated_name"]

CountersProvider = Callable[[], list[pcapng.InterfaceCounters]]


class DiskFull(KstapError):
    """The output filesystem is full; the file was closed at its last complete block."""


def check_writable(path: str, option: str = "-w") -> None:
    """Fail before capture starts if ``path`` cannot be created (exit 2); ``option`` names it in the message."""
    if path == "-":
        return
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    hint = f"pick a writable {option} path (or run as a user allowed to write there)"
    cannot = f"cannot write {path!r}" if option == "-w" else f"{option}: cannot write {path!r}"
    try:
        exists = target.exists()
    except PermissionError:  # a directory on the way that we may not search
        raise UsageError(f"{cannot}: permission denied", hint=hint) from None
    if target.is_dir():
        what = "output path" if option == "-w" else option
        example = "out.pcapng" if option == "-w" else "out.ndjson"
        raise UsageError(f"{what} {path!r} is a directory", hint=f"give a file name, e.g. {option} {example}")
    if not parent.is_dir():
        raise UsageError(f"{cannot}: directory {str(parent)!r} does not exist",
                         hint=f"create the directory first (mkdir -p {str(parent)!r}) or pick another {option} path")
    if _read_only(parent):
        raise UsageError(f"{cannot}: {str(parent)!r} is on a read-only file system",
                         hint=f"write to a writable file system, e.g. {option} /tmp/{target.name}")
    if not os.access(parent, os.W_OK | os.X_OK) or (exists and not os.access(target, os.W_OK)):
        raise UsageError(f"{cannot}: permission denied", hint=hint)
    check_target(path)
    if not exists:  # os.access trusts root; only creating the file tells (e.g. under /proc)
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise UsageError(f"{cannot}: {describe_os_error(exc)}", hint=hint) from None
        os.unlink(target)


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def ring_pattern(path: str) -> re.Pattern[str]:
    """The names :func:`rotated_name` gives ``path``'s files with -C/-G (``cap_00001.pcapng`` …)."""
    p = Path(path)
    suffix = p.suffix or ".pcapng"
    return re.compile(re.escape(p.stem) + r"_\d{5}" + re.escape(suffix) + "$")


def check_not_input(read: str | None, outputs: Mapping[str, str | None], *, rotating: bool = False) -> None:
    """Refuse outputs that would overwrite the --read file, or each other, before anything is opened.

    ``outputs`` maps an option (``-w``, ``--entries``) to its path (None or ``-`` = not a file). With
    ``rotating`` (-C/-G) the -w path stands for its ring files, ``NAME_00001.pcapng`` and so on.
    """
    files = {opt: p for opt, p in outputs.items() if p and p != "-"}
    if read and read != "-":
        for opt, p in files.items():
            if _same_file(read, p) or (opt == "-w" and rotating and _in_ring(read, p)):
                what = f"{opt} {p!r}" + (" (its ring files)" if opt == "-w" and rotating and not _same_file(read, p)
                                         else "")
                raise UsageError(f"{what} would overwrite the --read file {read!r}",
                                 hint="write the output to another file; the input is only read")
    seen: dict[str, str] = {}
    for opt, p in files.items():
        for other_opt, other in seen.items():
            if _same_file(p, other):
                raise UsageError(f"{opt} and {other_opt} name the same file {p!r}",
                                 hint="give each output its own file")
        seen[opt] = p


def _same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are one file that writing would clobber (a device such as /dev/null is not)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b) and stat.S_ISREG(os.stat(a).st_mode)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b) and not os.path.exists(a)


def _in_ring(read: str, path: str) -> bool:
    real_read, real_out = Path(os.path.realpath(read)), Path(os.path.realpath(path))
    return real_read.parent == real_out.parent and bool(ring_pattern(str(real_out)).match(real_read.name))


def rotated_name(path: str, index: int) -> str:
    """``capture.pcapng`` → ``capture_00003.pcapng`` (dumpcap's ring-buffer naming)."""
    p = Path(path)
    suffix = p.suffix or ".pcapng"
    return str(p.with_name(f"{p.stem}_{index:05d}{suffix}"))


class PcapngFiles:
    """Write records to pcapng, rotating by size (-C) and/or time (-G), keeping -W files."""

    def __init__(
        self,
        path: str,
        interfaces: Sequence[Interface],
        *,
        counters: CountersProvider,
        rotate_bytes: int | None = None,
        rotate_seconds: float | None = None,
        ring_files: int | None = None,
        with_queue: bool = False,
        comment: str = "",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.interfaces = list(interfaces)
        self._counters = counters
        self._rotate_bytes = rotate_bytes
        self._rotate_seconds = rotate_seconds
        self._ring_files = ring_files
        self._with_queue = with_queue
        self._comment = comment
        self._monotonic = monotonic
        self._rotating = bool(rotate_bytes or rotate_seconds)
        self._index = 0
        self._fd = -1
        self._regular = False
        self._chooser = SliceChooser()
        """The slice size of a regular file's writes, measured as it writes (one for every rotated file)."""
        self._offset = 0
        self._opened_at = 0.0
        self._start_ns = time.time_ns()
        self._delivered = [0] * len(self.interfaces)
        self.files: list[str] = []
        self.packets_written = 0
        self.bytes_written = 0
        self.capabilities = SinkCapabilities(patient=path != "-", encoded_blocks=True)
        """Only a file waits (not a pipe on stdout): the loop may sleep until a block is ready.
        EPBs the C encoder made are written as they are."""
        self._open_next()

    # -- file handling -------------------------------------------------------------------------
    def _open_next(self) -> None:
        if self.path == "-":
            self._fd = 1
            self.files = ["-"]
        else:
            self._index += 1
            name = rotated_name(self.path, self._index) if self._rotating else self.path
            try:
                self._fd = open_private(name)
            except OSError as exc:
                raise KstapError(f"cannot create {name!r}: {exc.strerror}",
                                 hint="check the -w path and free space") from exc
            self.files.append(name)
            if self._ring_files and len(self.files) > self._ring_files:
                oldest = self.files.pop(0)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(oldest)
        self._regular = slice_for(self._fd) is not None
        self._offset = 0
        self._opened_at = self._monotonic()
        head = pcapng.section_header(comment=self._comment)
        head += b"".join(pcapng.interface_description(i) for i in self.interfaces)
        try:
            self._write_blocks([head])
        except DiskFull:
            if self.path == "-" or len(self.files) < 2:
                raise
            self._drop_empty()  # a rotated file with not even its header: remove it, name the one before
            raise DiskFull(f"disk full: stopped writing {self.files[-1]!r}",
                           hint="free space, or make the ring smaller: fewer -W files or a smaller -C") from None

    def _drop_empty(self) -> None:
        """Remove the file just opened (it holds nothing readable) so ``files`` ends at real data."""
        os.close(self._fd)
        self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.files.pop())

    def _write_blocks(self, pieces: Sequence[EpbChunk]) -> None:
        """Write whole blocks; on a full disk cut the file back to the last complete block."""
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)  # a view is written as it is
        start = self._offset
        try:
            if self._regular:
                self._chooser.write(self._fd, data, start)
            else:
                write_all(self._fd, data, None, start)
        except BrokenPipeError as exc:
            raise OutputClosed() from exc
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or self._fd == 1:
                raise OutputFailed(f"-w: writing {self.files[-1]!r} failed: {describe_os_error(exc)}",
                                   hint="check the -w file system; the capture stopped there") from exc
            self._truncate(start)
            raise DiskFull(
                f"disk full: stopped writing {self.files[-1]!r}",
                hint="free space or use a ring of files: -C MB -W N",
            ) from exc
        self._offset = start + len(data)
        self.bytes_written += len(data)

    def _truncate(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
            os.lseek(self._fd, size, os.SEEK_SET)
        except OSError:
            pass

    # -- the pipeline's calls ------------------------------------------------------------------
    def write(self, records: Sequence[PacketRecord], comments: Mapping[int, str] | None = None) -> None:
        """Append packets; rotate first when the current file is due (with -C, between packets).

        ``comments`` maps an index in ``records`` to a packet comment (sampling metadata).
        """
        self.tick()
        start = 0
        while start < len(records):
            end = self._fill(records, start)
            run = records[start:end]
            notes = ({i - start: c for i, c in comments.items() if start <= i < end} if comments else None)
            try:
                self._write_blocks(pcapng.enhanced_packets(run, with_queue=self._with_queue, comments=notes))
            except DiskFull:
                self._write_what_fits(run)
                raise
            self._count(run)
            start = end
            if start < len(records):
                self.tick()

    def _fill(self, records: Sequence[PacketRecord], start: int) -> int:
        """Where the run of ``records`` from ``start`` brings the file to -C bytes (one at least)."""
        if self._rotate_bytes is None:
            return len(records)
        size, extra = self._offset, 12 if self._with_queue else 0
        for i in range(start, len(records)):
            caplen = records[i][1]
            size += 32 + caplen + (-caplen % 4) + extra
            if size >= self._rotate_bytes:
                return i + 1
        return len(records)

    def ensure_interfaces(self, interfaces: Sequence[Interface]) -> None:
        """Describe interfaces that appeared after the file was opened (IDBs may come late)."""
        new = list(interfaces[len(self.interfaces) :])
        if not new:
            return
        self._write_blocks([pcapng.interface_description(i) for i in new])
        self.interfaces.extend(new)
        self._delivered.extend(0 for _ in new)

    def write_encoded(self, chunks: list[EpbChunk], packets: int, if_id: int = 0) -> None:
        """Append ready-made EPBs (the C fast path) for ``packets`` packets of one interface.

        With -C the bytes are split at the packet that reaches the limit, so a file goes over it
        by at most one packet, as with the record path. Only a batch that crosses the limit is
        walked packet by packet.
        """
        self.tick()
        if not packets:
            return
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)  # one block: its view, not a copy
        while data:
            cut, n = self._encoded_cut(data, packets)
            try:
                self._write_blocks([data[:cut]])
            except DiskFull:
                self._write_blocks_that_fit(data[:cut], if_id)
                raise
            self.packets_written += n
            if if_id < len(self._delivered):
                self._delivered[if_id] += n
            data, packets = data[cut:], packets - n
            if data:
                self.tick()

    def _encoded_cut(self, data: EpbChunk, packets: int) -> tuple[int, int]:
        """(bytes, packets) of ``data`` to write before the file is due for rotation."""
        if self._rotate_bytes is None or self._offset + len(data) < self._rotate_bytes:
            return len(data), packets
        pos, n = 0, 0
        while pos < len(data):
            pos += struct.unpack_from("<I", data, pos + 4)[0]
            n += 1
            if self._offset + pos >= self._rotate_bytes:
                break
        return pos, n

    def _write_blocks_that_fit(self, data: EpbChunk, if_id: int) -> None:
        pos = 0
        while pos + 8 <= len(data):
            (length,) = struct.unpack_from("<I", data, pos + 4)
            try:
                self._write_blocks([data[pos : pos + length]])
            except DiskFull:
                return
            self.packets_written += 1
            if if_id < len(self._delivered):
                self._delivered[if_id] += 1
            pos += length

    def _write_what_fits(self, records: Sequence[PacketRecord]) -> None:
        """After ENOSPC on a batch, keep as many whole packets of it as still fit."""
        for rec in records:
            try:
                self._write_blocks(pcapng.enhanced_packets([rec], with_queue=self._with_queue))
            except DiskFull:
                return
            self._count([rec])

    def _count(self, records: Sequence[PacketRecord]) -> None:
        self.packets_written += len(records)
        for rec in records:
            if rec[4] < len(self._delivered):
                self._delivered[rec[4]] += 1

    def tick(self) -> None:
        """Rotate if the current file is past -C bytes or -G seconds."""
        if not self._rotating:
            return
        too_big = self._rotate_bytes is not None and self._offset >= self._rotate_bytes
        too_old = (
            self._rotate_seconds is not None
            and self._monotonic() - self._opened_at >= self._rotate_seconds
        )
        if too_big or too_old:
            self._finish_file()
            self._open_next()

    def _statistics(self) -> bytes:
        counters = self._counters()
        blocks = []
        for if_id, c in enumerate(counters[: len(self.interfaces)]):
            fixed = pcapng.InterfaceCounters(self._start_ns, time.time_ns(), c.received, c.dropped,
                                             self._delivered[if_id])
            blocks.append(pcapng.interface_statistics(if_id, fixed, comment=c.comment))
        return b"".join(blocks)

    def _finish_file(self) -> None:
        try:
            self._write_blocks([self._statistics()])
        finally:
            if self._fd > 2:
                os.close(self._fd)
            self._fd = -1

    def close(self) -> bool:
        """Write the statistics blocks and close. False if they did not fit on the disk."""
        if self._fd < 0:
            return True
        try:
            self._finish_file()
        except (DiskFull, OutputClosed):
            if self._fd > 2:
                os.close(self._fd)
            self._fd = -1
            return False
        return True
