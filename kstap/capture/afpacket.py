"""AF_PACKET capture with a TPACKET_V3 mmap ring (packet(7), Documentation/networking/packet_mmap).

The kernel fills fixed-size blocks with many packets and hands a whole block to user space at
once, so the Python loop pays one poll and one status flip per block, not per packet. The BPF
filter (and its snaplen) runs in the kernel before anything is copied. With a fanout group,
several processes share one interface and the kernel's symmetric flow hash sends both
directions of a flow to the same process.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kstap import c_helpers
from kstap.capture import interfaces
from kstap.contracts import EpbChunk, FirstPacketNotes, SourceCapabilities
from kstap.errors import EnvironmentProblem, KstapError, UsageError
from kstap.filters.bpf import Program
from kstap.merge import TimeOrderedMerge
from kstap.model import LINKTYPE_ETHERNET, Interface, InterfaceEvent, LinkChange, PacketRecord, SourceStats

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
TPACKET_V3 = 2
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
SO_ATTACH_FILTER = 26
ETH_P_ALL = 0x0003
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6

_BLOCK_HDR = struct.Struct("<III")  # block_status, num_pkts, offset_to_first_pkt (at +8)
_PKT_HDR = struct.Struct("<IIIIIIH")  # next_offset, sec, nsec, snaplen, len, status, mac
_VLAN = struct.Struct("<IH")  # hv1.tp_vlan_tci, hv1.tp_vlan_tpid
HV1_VLAN = 32
"""Where tpacket3_hdr.hv1.tp_vlan_tci is (linux/if_packet.h; hv1 starts at 28 with tp_rxhash)."""
_U32 = struct.Struct("<I")
_STATS = struct.Struct("III")  # tp_packets, tp_drops, tp_freeze_q_cnt


def _load_fast(name: str) -> Callable[..., Any] | None:
    """A function of the C helper, unless missing or disabled with KSTAP_PURE_PYTHON=1."""
    return c_helpers.load("kstap.capture._ringfast", name)


encode_block = _load_fast("encode_block")
"""C fast path: a TPACKET_V3 block → pcapng EPB bytes in one call (None when unavailable)."""
encode_block_sampled = _load_fast("encode_block_sampled")
"""The same, also commenting each flow's first packet (percentage mode)."""
epb_batch = _load_fast("epb_batch")
"""The encoders' EPB bytes rewritten as a worker stream's BATCH body (kstap.remote.protocol)."""
table_compact = _load_fast("table_compact")
table_stale = _load_fast("table_stale")
NO_BOUND = (1 << 64) - 1
"""The first-packet encoder's lookup bound that looks every packet up."""
NO_SHED = 1 << 32
"""The encoders' shed threshold that sheds nothing (every 32-bit hash is below it)."""
OUT_BYTES = 8 << 20
"""Bytes of ring blocks one read encodes at most (at least one block), and so about the size of the
output buffer a ring keeps and writes again at each read. A new bytes object per block is a fresh
glibc mapping or a moved heap top, page faults and zeroing included: with glibc's thresholds fixed,
the tree before the buffer measured 8 % less CPU in percentage mode (docs/benchmarks.md)."""
Encode = Callable[[int, int, bytearray, int], tuple[bytearray, int, int, int]]
"""An encoder of one ready block: (block offset, its packets, packets still wanted, out, pos) →
(the bytearray written, packets, captured bytes, end)."""


@dataclass(frozen=True)
class RingConfig:
    """TPACKET_V3 ring geometry."""

    buffer_bytes: int = 32 << 20
    """Whole ring. tcpdump's default is 2 MiB; 32 MiB rides out bursts at ~1 Mpps for ~20 ms."""
    block_bytes: int = 1 << 20
    """One block. Big blocks mean fewer wake-ups; a GSO super-packet (64 KiB) always fits."""
    retire_ms: int = 20
    """A partly filled block is handed over after this long, bounding latency at low rates."""

    @property
    def blocks(self) -> int:
        return max(2, self.buffer_bytes // self.block_bytes)


def packet_socket(kind: int) -> socket.socket:
    """An AF_PACKET socket of ``kind`` (SOCK_RAW: link-layer frames; SOCK_DGRAM: cooked), or the
    environment error that says which capability is missing."""
    try:
        return socket.socket(socket.AF_PACKET, kind, 0)
    except PermissionError:
        raise EnvironmentProblem(
            "capturing needs the CAP_NET_RAW capability",
            hint="run as root, or grant it: sudo setcap cap_net_raw,cap_net_admin=eip <python>",
        ) from None


def map_ring(sock: socket.socket, r: RingConfig) -> mmap.mmap:
    """Give ``sock`` a TPACKET_V3 receive ring of geometry ``r`` and map it."""
    req = struct.pack("IIIIIII", r.block_bytes, r.blocks, 2048, r.block_bytes // 2048 * r.blocks, r.retire_ms, 0, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot allocate a {r.buffer_bytes >> 20} MiB capture ring: "
                                 f"{exc.strerror}", hint="use a smaller --buffer-size") from exc
    return mmap.mmap(sock.fileno(), r.block_bytes * r.blocks, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def attach_filter(sock: socket.socket, prog: Program) -> None:
    """Attach (or atomically replace) ``sock``'s filter; a usage error if the kernel refuses it. A program
    with an attacher (the in-kernel flow table's eBPF filter behind the expression) is attached by it."""
    if prog.attacher is not None:
        prog.attacher.attach(sock, prog.insns, prog.linktype)
        return
    fprog, keep = prog.sock_fprog()
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as exc:  # ENOMEM: the program is above net.core.optmem_max once translated
        raise UsageError(f"the kernel refused the {len(prog.insns)}-instruction filter: {exc.strerror}",
                         hint="simplify the filter (e.g. 'net 10.0.0.0/16' instead of many hosts), "
                              "or raise net.core.optmem_max") from None
    del keep


def fold_counters(sock: socket.socket, stats: SourceStats) -> SourceStats:
    """Add the kernel's PACKET_STATISTICS (which reset on every read) to ``stats``."""
    try:
        raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
    except OSError:
        return stats
    packets, drops, _ = _STATS.unpack(raw)
    stats.received += packets
    stats.dropped += drops
    return stats


class BlockRing:
    """The user-space half of a mapped TPACKET_V3 ring: which block comes next, and the one walk over
    the blocks user space owns (:class:`AfPacketRing`, and ``-i any``'s ``CookedSource``, read their
    packets with it; the C encoders read each block it hands them)."""

    mm: mmap.mmap
    _out: bytearray
    """The encoders' output buffer (:data:`OUT_BYTES`), kept from one read to the next."""
    _handed_back: int = 0
    """Blocks read and handed back to the kernel so far."""
    _block: int
    """The next block to look at (the kernel fills them in order)."""
    _nblocks: int
    _bsize: int

    def _ready_blocks(self, limit: int = 64) -> Iterator[tuple[int, int, int]]:
        """(offset of the block, its packets, offset of its first packet) for each block the kernel
        has handed over, oldest first, at most ``limit``. A block goes back to the kernel when the
        caller asks for the next one or stops the walk (what it did not read of it is discarded)."""
        mm = self.mm
        for _ in range(limit):
            base = self._block * self._bsize
            status, num, first = _BLOCK_HDR.unpack_from(mm, base + 8)
            if not status & TP_STATUS_USER:
                return
            try:
                yield base, num, first
            finally:
                _U32.pack_into(mm, base + 8, TP_STATUS_KERNEL)
                self._block = (self._block + 1) % self._nblocks
                self._handed_back += 1

    def _next_holds_packets(self) -> bool:
        """Whether the next block holds packets: handed over, or still being filled with at least one.

        The kernel counts a packet in its block (``num_pkts``, read here in place) before it copies
        and stamps it, so a block the kernel is filling that counts none holds nothing stamped before
        this read. A block the kernel has not opened again still shows its old count: that only
        makes a drain wait for nothing, never miss a packet."""
        status, num, _ = _BLOCK_HDR.unpack_from(self.mm, self._block * self._bsize + 8)
        return bool(status & TP_STATUS_USER) or num > 0

    def _count_ready(self, limit: int) -> int:
        """How many blocks, from the next one on, the kernel has handed over (at most ``limit``)."""
        mm = self.mm
        n = 0
        while n < min(limit, self._nblocks):
            status = _U32.unpack_from(mm, ((self._block + n) % self._nblocks) * self._bsize + 8)[0]
            if not status & TP_STATUS_USER:
                break
            n += 1
        return n

    def _encode_ready(self, max_packets: int, limit: int, encode: Encode) -> tuple[list[EpbChunk], int, int]:
        """The C paths' walk: ``encode(block offset, packets still wanted, out, pos)``
        writes each ready block's EPBs into the bytearray ``out`` from ``pos`` on and gives (the
        bytearray written, packets, captured bytes, end), until ``max_packets`` are written; the rest
        of a block cut short that way is discarded (capture is ending).

        The chunks are views of one buffer that the next call writes again (:data:`OUT_BYTES`): they
        are read before it (the loop writes them to the file at once). A view still alive then keeps
        its bytes: the encoder writes into a new buffer instead (``output_at`` in ``_ringfast.c``)."""
        chunks: list[EpbChunk] = []
        packets = nbytes = 0
        if max_packets <= 0:
            return chunks, packets, nbytes
        out, end, spans = self._out, 0, []
        for base, _, _ in self._ready_blocks(min(limit, max(1, OUT_BYTES // self._bsize))):
            out, n, cap, new_end = encode(base, max_packets - packets, out, end)
            spans.append((end, new_end))
            end = new_end
            packets += n
            nbytes += cap
            if packets >= max_packets:
                break
        self._out = out
        view = memoryview(out)
        return [view[a:b] for a, b in spans if b > a], packets, nbytes


class AfPacketRing(BlockRing):
    """One AF_PACKET socket on one interface with its TPACKET_V3 ring."""

    def __init__(
        self,
        name: str,
        program: Program,
        *,
        if_id: int = 0,
        worker: int = 0,
        ring: RingConfig = RingConfig(),
        fanout_group: int | None = None,
    ) -> None:
        self.ifindex = interfaces.require(name)
        self.gone = False
        """The interface went away (deleted, or its namespace was): nothing more will arrive."""
        self.name = name
        self.if_id = if_id
        self.worker = worker
        self.stats = SourceStats()
        self._ring = ring
        self.sock = packet_socket(socket.SOCK_RAW)
        try:
            self._setup(program, fanout_group)
        except BaseException:
            self.sock.close()
            raise

    def _setup(self, program: Program, fanout_group: int | None) -> None:
        s = self.sock
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        # Bind first with protocol 0 (receives nothing) to learn the link type, then attach the
        # filter, and only then start receiving: no unfiltered packet can slip in between.
        s.bind((self.name, 0))
        hatype = s.getsockname()[3]
        linktype = interfaces.LINKTYPE_BY_ARPHRD.get(hatype)
        if linktype is None:
            raise UsageError(f"interface {self.name!r} has link type ARPHRD {hatype}, unsupported here",
                             hint="try --capture libpcap, which knows more link types")
        if linktype != program.linktype:
            raise KstapError(f"filter compiled for link type {program.linktype}, interface has {linktype}",
                             hint="compile the filter for the interface's link type (kstap filter -i IFACE)")
        self.linktype = linktype
        self._loopback = interfaces.is_loopback(hatype)
        self.set_filter(program)
        r = self._ring
        self.mm = map_ring(s, r)
        s.bind((self.name, ETH_P_ALL))
        if fanout_group is not None:
            # No PACKET_FANOUT_FLAG_DEFRAG: it makes the kernel reassemble IP fragments before the
            # socket sees them, so the file would not hold what was on the wire. Without it the
            # kernel's symmetric hash ignores ports for every fragment, exactly as kstap's flow key
            # does (fragments belong to the address-pair flow).
            arg = (fanout_group & 0xFFFF) | (PACKET_FANOUT_HASH << 16)
            s.setsockopt(SOL_PACKET, PACKET_FANOUT, _U32.pack(arg))  # > INT_MAX: pass as bytes
        self._block = 0
        self._nblocks = r.blocks
        self._bsize = r.block_bytes
        self._out = bytearray()

    def set_filter(self, program: Program) -> None:
        """Attach (or atomically replace) the kernel filter; loopback drops outgoing copies."""
        attach_filter(self.sock, program.without_outgoing() if self._loopback else program)

    def interface(self, program: Program) -> Interface:
        return Interface(self.name, self.linktype, program.snaplen, program.expression)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_blocks(self, out: list[PacketRecord], limit: int = 64) -> int:
        """Append the packets of every block user space owns (up to ``limit`` blocks)."""
        mm = self.mm
        got = 0
        ifid = self.if_id
        worker = self.worker
        unpack_pkt = _PKT_HDR.unpack_from
        append = out.append
        for base, num, first in self._ready_blocks(limit):
            off = base + first
            for _ in range(num):
                nxt, sec, nsec, snap, length, st, mac = unpack_pkt(mm, off)
                start = off + mac
                if st & TP_STATUS_VLAN_VALID:
                    data = _with_vlan_tag(mm, off, start, snap, st)
                    snap += 4
                    length += 4
                else:
                    data = mm[start : start + snap]
                append((sec * 1_000_000_000 + nsec, snap, length, data, ifid, worker))
                off += nxt
            got += num
        self.stats.delivered += got
        return got

    def read_encoded(self, max_packets: int, limit: int = 64, seen: FirstPacketNotes | None = None,
                     wanted: list[PacketRecord] | None = None) -> tuple[list[EpbChunk], int, int]:
        """Like :meth:`read_blocks` but straight to pcapng EPB bytes (the C fast path).

        Returns (EPB chunks, packets, captured bytes). Stops after ``max_packets`` packets; the
        rest of a block cut short that way is discarded (capture is ending). With ``seen``
        (percentage mode, the kernel flow table), each flow's first packet gets its ``flow``
        comment. With ``wanted`` (--entries), the packets a dissector would take are appended to it
        as records; the others never become Python objects.

        ``seen``'s lookup bound is read once the blocks to encode are seen ready (the packets in them
        were all decided by then), and only for Ethernet frames, the only ones the C key reads as the
        kernel flow table does.
        """
        assert encode_block is not None and (seen is None or encode_block_sampled is not None)
        mm = self.mm
        bound = NO_BOUND
        if seen is not None:
            limit = self._count_ready(limit)
            if not limit:
                return [], 0, 0
            if self.linktype == LINKTYPE_ETHERNET:
                bound = seen.lookup_bound()

        def encode(base: int, left: int, out: bytearray, pos: int) -> tuple[bytearray, int, int, int]:
            if seen is None:
                assert encode_block is not None
                out, n, cap, _last, end = encode_block(mm, base, self._bsize, self.if_id, left, wanted,
                                                       self.linktype, out, pos)
                return out, n, cap, end
            assert encode_block_sampled is not None
            out, n, cap, fresh, _full, shed, keyed, cut, end, seen.table = encode_block_sampled(
                mm, base, self._bsize, self.if_id, left, seen.table, seen.seed, seen.suffix,
                wanted, self.linktype, seen.shed_threshold, seen.shed_ns, seen.shed_suffix, bound, out, pos)
            seen.flows_seen += fresh
            seen.flows_shed += shed
            seen.packets_keyed += keyed
            seen.keys_cut += cut
            return out, n, cap, end

        chunks, packets, nbytes = self._encode_ready(max_packets, limit, encode)
        self.stats.delivered += packets
        return chunks, packets, nbytes

    def update_stats(self) -> SourceStats:
        """Fold the kernel's counters (which reset on every read) into ``self.stats``."""
        return fold_counters(self.sock, self.stats)

    def close(self) -> None:
        self.update_stats()
        with contextlib.suppress(AttributeError, BufferError):
            self.mm.close()
        self.sock.close()


def _with_vlan_tag(mm: mmap.mmap, hdr: int, start: int, snap: int, status: int) -> bytes:
    """Put back the 802.1Q tag the kernel moved into metadata, as libpcap does."""
    tci, tpid = _VLAN.unpack_from(mm, hdr + HV1_VLAN)
    if not status & TP_STATUS_VLAN_TPID_VALID:
        tpid = 0x8100
    head = min(12, snap)
    return mm[start : start + head] + struct.pack("!HH", tpid, tci & 0xFFFF) + mm[start + head : start + snap]


class StopWake:
    """A source's poll set that also ends a wait when the stop flag's pipe turns readable, and stops
    doing so for the drain at a stop (the pipe stays readable: polling it would spin)."""

    _poll: select.poll
    _wake_fd: int | None = None

    def wake_on(self, fd: int) -> None:
        """Also end a wait when ``fd`` turns readable (the stop flag's pipe); it is never read here."""
        self._poll.register(fd, select.POLLIN)
        self._wake_fd = fd

    def _stop_waking(self) -> None:
        if self._wake_fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._poll.unregister(self._wake_fd)
            self._wake_fd = None


class AfPacketSource(StopWake):
    """Several rings (one per interface) polled together."""

    def __init__(self, rings: list[AfPacketRing]) -> None:
        self.rings = rings
        self._poll = select.poll()
        self._by_fd = {}
        for r in rings:
            self._poll.register(r.fileno(), select.POLLIN | select.POLLERR)
            self._by_fd[r.fileno()] = r
        self._merge: TimeOrderedMerge[PacketRecord] = TimeOrderedMerge(_ts)
        self.gone: list[str] = []
        """Interfaces that went away during the capture (while others remained: see :meth:`read`)."""
        self._lag_ns = (max((r._ring.retire_ms for r in rings), default=20) + 30) * 1_000_000
        self.events: list[InterfaceEvent] = []
        self._ended: KstapError | None = None

    def read(self, timeout_ms: int) -> list[PacketRecord]:
        """Packets of all ready blocks; waits up to ``timeout_ms`` when none is ready.

        With several interfaces, each ring hands over its blocks on its own schedule, so packets
        are held until no ring can still deliver an older one (its block-retire time has passed)
        and released in time order: the same watermark merge the fanout workers use.
        """
        if self._ended is not None and not len(self._merge):
            raise self._ended
        if len(self.rings) == 1:
            return self._read_raw(timeout_ms)
        watermark = time.time_ns() - self._lag_ns
        self._merge.add(self._read_raw(timeout_ms))
        if self._ended is not None:  # nothing older can come: release everything
            return self._merge.release_all()
        return self._merge.release(watermark)

    def _read_raw(self, timeout_ms: int) -> list[PacketRecord]:
        out: list[PacketRecord] = []
        for r in self.rings:
            if not r.gone:
                r.read_blocks(out)
        if out or self._ended is not None:
            return out
        try:
            events = self._poll.poll(timeout_ms)
        except InterruptedError:
            return out
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return out
            raise
        for fd, ev in events:
            ring = self._by_fd.get(fd)
            if ring is None:  # the stop flag's pipe
                continue
            if ev & select.POLLERR:
                err = ring.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == errno.ENETDOWN:
                    self._lose(ring, out)
                    continue
            ring.read_blocks(out)
        return out

    def _lose(self, ring: AfPacketRing, out: list[PacketRecord]) -> None:
        """``ring``'s interface went away: take every packet its ring still holds (the partly
        filled block is handed over by its retire timer), note it, and poll it no more. When it
        was the last one, the next read raises (after every packet read was returned)."""
        deadline = time.monotonic() + (ring._ring.retire_ms + 30) / 1000
        while time.monotonic() < deadline:
            ring.read_blocks(out)
            time.sleep(0.005)
        ring.read_blocks(out)
        ring.gone = True
        self.gone.append(ring.name)
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(ring.fileno())
        self.events.append(InterfaceEvent(time.time_ns(), LinkChange.VANISHED, ring.name, ring.ifindex))
        if all(r.gone for r in self.rings):
            how = "went down" if ring.name in interfaces.available() else "went away"
            self._ended = KstapError(f"interface {ring.name!r} {how} during the capture",
                                     hint="every packet read before it went is in the output; "
                                          "restart when it is back, or capture with -i any")

    def take_events(self) -> list[InterfaceEvent]:
        """Named interfaces that went away since the last call."""
        out, self.events = self.events, []
        return out

    def read_encoded(self, timeout_ms: int, max_packets: int, seen: FirstPacketNotes | None = None,
                     wanted: list[PacketRecord] | None = None) -> tuple[list[EpbChunk], int, int]:
        """Single-ring fast path: EPB bytes of the ready blocks, waiting up to ``timeout_ms``
        (``seen``: first-packet comments; ``wanted``: what the dissectors take, see the ring's)."""
        ring = self.rings[0]
        if self._ended is not None:
            raise self._ended
        # with ``wanted`` each block's packets exist twice until the dissectors have run (EPB bytes
        # and records): a few blocks per call keep that transient memory small
        blocks = 64 if wanted is None else 2
        got = ring.read_encoded(max_packets, blocks, seen=seen, wanted=wanted)
        if got[1] or max_packets <= 0:
            return got
        try:
            events = self._poll.poll(timeout_ms)
        except InterruptedError:
            return got
        # As in read(): a vanished link shows as POLLERR, which poll reports until SO_ERROR is read.
        if any(ev & select.POLLERR for _, ev in events) and \
                ring.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ENETDOWN:
            time.sleep((ring._ring.retire_ms + 30) / 1000)  # its last block is retired by the timer
            got = ring.read_encoded(max_packets, blocks, seen=seen, wanted=wanted)
            self._lose(ring, [])
            return got
        return ring.read_encoded(max_packets, blocks, seen=seen, wanted=wanted)

    @property
    def fast(self) -> bool:
        """True when the C encoder can serve this source (one ring)."""
        return encode_block is not None and len(self.rings) == 1

    @property
    def capabilities(self) -> SourceCapabilities:
        fast = self.fast
        return SourceCapabilities(encoded_blocks=fast, sampled_blocks=fast and encode_block_sampled is not None,
                                  dissect_split=fast, live_filter=True, interface_events=True)

    def set_filter(self, program: Program) -> None:
        for r in self.rings:
            r.set_filter(program)

    def drain(self, retire_ms: int) -> list[PacketRecord]:
        """At stop: take the ready blocks, and the partly filled one of each ring once it is retired."""
        self._stop_waking()  # the stop flag's pipe stays readable: polling it would spin until the deadline
        out = drain_blocks([r for r in self.rings if not r.gone], self._read_raw, retire_ms)
        self._merge.add(out)
        return self._merge.release_all()

    def stats(self) -> list[SourceStats]:
        return [r.update_stats() for r in self.rings]

    def close(self) -> None:
        for r in self.rings:
            r.close()


def drain_blocks(rings: Sequence[BlockRing], read: Callable[[int], list[PacketRecord]],
                 retire_ms: int) -> list[PacketRecord]:
    """At a stop: what ``read`` (a read of every ring, waiting up to its argument in ms) takes now,
    then, for each ring whose kernel was filling a block with packets in it, that block, which its
    retire timer hands over within ``retire_ms``. A ring whose open block counts no packet has none
    from before the stop: no wait for it (a stop used to wait the whole retire time, up to 530 ms
    for a file capture, even when idle)."""
    deadline = time.monotonic() + (retire_ms + 30) / 1000
    out: list[PacketRecord] = []
    while True:  # what is ready (blocks the kernel fills meanwhile are after the stop: bounded)
        got = read(0)
        out.extend(got)
        if not got or time.monotonic() >= deadline:
            break
    waiting = {id(r): (r, r._handed_back) for r in rings if r._next_holds_packets()}
    while waiting and (left := deadline - time.monotonic()) > 0:
        out.extend(read(max(1, int(left * 1000))))
        waiting = {k: (r, n) for k, (r, n) in waiting.items() if r._handed_back == n}
    return out


def _ts(rec: PacketRecord) -> int:
    return rec[0]
