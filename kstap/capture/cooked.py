"""``-i any`` as libpcap does it: one cooked AF_PACKET socket bound to every interface.

One SOCK_DGRAM packet socket with ifindex 0 receives from every interface of the namespace,
present and future, so a pod's veth that appears after the start is captured at once and one
that vanishes ends nothing. The kernel hands over each packet from its network header with a
``sockaddr_ll`` (interface index, ARPHRD type, packet type, source address); kstap writes it as
**LINKTYPE_LINUX_SLL2** (``tcpdump -i any -y LINUX_SLL2``): one IDB for the whole capture and the
interface index and direction in every packet (docs/capture.md says why not one IDB per
interface). Frames of every link type (Ethernet veths, tun and WireGuard devices, loopback) fit in
it, so an odd device never stops the start.

The filter is compiled for LINUX_SLL2 and rewritten for the socket
(:func:`kstap.filters.bpf.for_cooked_socket`); the sampling tail reads the cooked packet
(``sampling_tail(cooked=True)``). Outgoing copies on the loopback device are rejected in the
kernel, as libpcap drops them in user space. The copies one packet leaves on several interfaces
(sender veth, bridge, receiver veth) are removed by :mod:`kstap.dedup`; interfaces that
come and go are reported by :mod:`kstap.capture.linkwatch`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import select
import socket
import struct

from kstap.capture.afpacket import (
    _PKT_HDR,
    _VLAN,
    ETH_P_ALL,
    HV1_VLAN,
    NO_BOUND,
    NO_SHED,
    PACKET_VERSION,
    SOL_PACKET,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    TPACKET_V3,
    BlockRing,
    RingConfig,
    StopWake,
    _load_fast,
    attach_filter,
    drain_blocks,
    fold_counters,
    map_ring,
    packet_socket,
)
from kstap.capture.linkwatch import LinkWatch
from kstap.contracts import EpbChunk, FirstPacketNotes, SourceCapabilities
from kstap.dedup import DEFAULT_WINDOW_NS, Dedup, digest
from kstap.filters.bpf import (
    LINKTYPE_LINUX_SLL2,
    PACKET_OUTGOING,
    SKF_AD_IFINDEX,
    SKF_AD_OFF,
    SKF_AD_PKTTYPE,
    Program,
)
from kstap.model import Interface, InterfaceEvent, PacketRecord, SourceStats

encode_cooked_block = _load_fast("encode_cooked_block")
"""C fast path: a cooked block → LINUX_SLL2 EPBs with copies removed (None when unavailable)."""
encode_cooked_block_sampled = _load_fast("encode_cooked_block_sampled")
"""The same, also commenting each flow's first packet (percentage mode, the kernel flow table) and
handing over the packets a dissector takes (--entries)."""
DEDUP_SLOTS = 1 << 17
"""Seen-packet slots of the C path (3 MiB): 50 ms of a 1 Mpps node fills well under half."""
TPACKET3_HDRLEN = 48
"""TPACKET_ALIGN(sizeof(struct tpacket3_hdr)): the sockaddr_ll follows the header there."""
LOOPBACK_IFINDEX = 1
"""The loopback device is always index 1 in its namespace (net/core/dev.c registers it first)."""
_LL = struct.Struct("=HHiHBB8s")  # sockaddr_ll: family, protocol (network order), ifindex, hatype, pkttype, halen, addr
_SLL2 = struct.Struct("!HHIHBB8s")  # protocol, reserved, ifindex, hatype, pkttype, halen, addr
_TAG = struct.Struct("!HH")
SLL2_LEN = _SLL2.size


class _SockaddrLL(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("protocol", ctypes.c_ushort), ("ifindex", ctypes.c_int),
                ("hatype", ctypes.c_ushort), ("pkttype", ctypes.c_ubyte), ("halen", ctypes.c_ubyte),
                ("addr", ctypes.c_ubyte * 8)]


def _bind_all(sock: socket.socket) -> None:
    """bind() to ifindex 0 (every interface) for ETH_P_ALL; Python's bind wants a name."""
    addr = _SockaddrLL(socket.AF_PACKET, socket.htons(ETH_P_ALL), 0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.bind(sock.fileno(), ctypes.byref(addr), ctypes.sizeof(addr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind(any): {errno.errorcode.get(err, err)}")


def _no_loopback_outgoing(program: Program) -> Program:
    """Reject what the host sends on ``lo`` (it arrives there again as incoming)."""
    head = (
        (0x30, 0, 0, (SKF_AD_OFF + SKF_AD_PKTTYPE) & 0xFFFFFFFF),  # ldb [pkttype]
        (0x15, 0, 3, PACKET_OUTGOING),  # outgoing? else into the program
        (0x20, 0, 0, (SKF_AD_OFF + SKF_AD_IFINDEX) & 0xFFFFFFFF),  # ld [ifindex]
        (0x15, 0, 1, LOOPBACK_IFINDEX),
        (0x06, 0, 0, 0),
    )
    return program.with_insns(head + program.insns)


class CookedSource(BlockRing, StopWake):
    """The one socket of ``-i any``, its ring, its dedup and its interface watch."""

    capabilities = SourceCapabilities(live_filter=True, interface_events=True,
                                      encoded_blocks=encode_cooked_block is not None,
                                      sampled_blocks=encode_cooked_block_sampled is not None,
                                      dissect_split=encode_cooked_block_sampled is not None)
    """The C encoder writes whole blocks as SLL2 EPBs (copies removed) when nothing needs the
    records themselves, with each flow's first-packet comment when the kernel decided the sampling
    and the dissectors' packets handed over as records (--entries); otherwise :meth:`read` builds
    each record here (SLL2 header + payload)."""

    def __init__(self, program: Program, *, ring: RingConfig = RingConfig(),
                 dedup_window_ns: int = DEFAULT_WINDOW_NS) -> None:
        if program.linktype != LINKTYPE_LINUX_SLL2 or not program.cooked:
            raise ValueError("CookedSource needs a program rewritten by for_cooked_socket()")
        self.sock = packet_socket(socket.SOCK_DGRAM)
        self._ring = ring
        self._stats = SourceStats()
        self.dedup = Dedup(dedup_window_ns) if dedup_window_ns > 0 else None
        self._window_ns = max(0, dedup_window_ns)
        self._table = bytearray(24 * (DEDUP_SLOTS + 1))
        """The C path's seen-packet table (slot 0: header with the capacity)."""
        struct.pack_into("<QQ", self._table, 0, 0, DEDUP_SLOTS)
        self._c_duplicates = 0
        self.events: list[InterfaceEvent] = []
        self.links: LinkWatch | None = None
        try:
            self._setup(program)
            self.links = LinkWatch()
        except BaseException:
            self.close()
            raise
        self._poll = select.poll()
        self._poll.register(self.sock.fileno(), select.POLLIN | select.POLLERR)
        self._poll.register(self.links.fileno(), select.POLLIN)
        self.interfaces = [Interface("any", LINKTYPE_LINUX_SLL2, program.snaplen, program.expression,
                                     "every interface, Linux cooked v2 (the ifindex is in each packet)")]

    def _setup(self, program: Program) -> None:
        s = self.sock
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        self.set_filter(program)  # before the bind: no unfiltered packet can slip in
        r = self._ring
        self.mm = map_ring(s, r)
        _bind_all(s)
        self._block = 0
        self._nblocks = r.blocks
        self._bsize = r.block_bytes
        self._out = bytearray()

    def set_filter(self, program: Program) -> None:
        """Attach (or atomically replace) the kernel filter (a cooked-socket program)."""
        attach_filter(self.sock, _no_loopback_outgoing(program))

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- reading ---------------------------------------------------------------------------------
    def read(self, timeout_ms: int) -> list[PacketRecord]:
        """The packets of every ready block (copies removed); waits up to ``timeout_ms`` for one."""
        out: list[PacketRecord] = []
        self._read_blocks(out)
        if not out:
            self._wait(timeout_ms)
            self._read_blocks(out)
        self._watch()
        return out

    def _wait(self, timeout_ms: int) -> None:
        """Until a block is ready, an interface changes, the stop flag's pipe wakes, or ``timeout_ms``."""
        with contextlib.suppress(InterruptedError):
            self._poll.poll(timeout_ms)

    def _watch(self) -> None:
        if self.links is not None:
            self.events.extend(self.links.changes())

    def take_events(self) -> list[InterfaceEvent]:
        """Interfaces that appeared or vanished since the last call."""
        self._watch()
        out, self.events = self.events, []
        return out

    def _read_blocks(self, out: list[PacketRecord], limit: int = 64) -> int:
        mm = self.mm
        got = 0
        unpack_pkt = _PKT_HDR.unpack_from
        unpack_ll = _LL.unpack_from
        sll2 = _SLL2.pack
        dedup = self.dedup
        append = out.append
        before = len(out)
        for base, num, first in self._ready_blocks(limit):
            off = base + first
            for _ in range(num):
                nxt, sec, nsec, snap, length, st, mac = unpack_pkt(mm, off)
                _fam, proto, ifindex, hatype, pkttype, halen, addr = unpack_ll(mm, off + TPACKET3_HDRLEN)
                proto = ((proto & 0xFF) << 8) | (proto >> 8)
                payload = mm[off + mac : off + mac + snap]
                ts = sec * 1_000_000_000 + nsec
                off += nxt
                got += 1
                if dedup is not None and dedup.copy(digest(proto, payload, length), ifindex, ts):
                    continue
                if st & TP_STATUS_VLAN_VALID:
                    tci, tpid = _VLAN.unpack_from(mm, off - nxt + HV1_VLAN)
                    if not st & TP_STATUS_VLAN_TPID_VALID:
                        tpid = 0x8100
                    data = sll2(tpid, 0, ifindex, hatype, pkttype, halen, addr) + _TAG.pack(tci & 0xFFFF, proto) \
                        + payload
                    append((ts, snap + SLL2_LEN + 4, length + SLL2_LEN + 4, data, 0, 0))
                else:
                    append((ts, snap + SLL2_LEN, length + SLL2_LEN,
                            sll2(proto, 0, ifindex, hatype, pkttype, halen, addr) + payload, 0, 0))
        self._stats.delivered += len(out) - before
        return got

    def read_encoded(self, timeout_ms: int, max_packets: int, seen: FirstPacketNotes | None = None,
                     wanted: list[PacketRecord] | None = None) -> tuple[list[EpbChunk], int, int]:
        """The C fast path: EPB bytes (LINUX_SLL2, copies removed) of the ready blocks, waiting up
        to ``timeout_ms`` when none is ready. With ``seen`` (percentage mode, the kernel flow
        table), each flow's first packet gets its ``flow`` comment; with ``wanted`` (--entries), the
        packets a dissector would take are appended to it as records (as the Ethernet ring's
        :meth:`kstap.capture.afpacket.AfPacketRing.read_encoded`)."""
        # with ``wanted`` each block's packets exist twice until the dissectors have run (EPB bytes
        # and records): a few blocks per call keep that transient memory small
        limit = 64 if wanted is None else 2
        got = self._encoded(max_packets, limit, seen, wanted)
        if not got[1] and max_packets > 0:
            self._wait(timeout_ms)
            got = self._encoded(max_packets, limit, seen, wanted)
        self._watch()
        return got

    def _encoded(self, max_packets: int, limit: int = 64, seen: FirstPacketNotes | None = None,
                 wanted: list[PacketRecord] | None = None) -> tuple[list[EpbChunk], int, int]:
        assert encode_cooked_block is not None
        assert (seen is None and wanted is None) or encode_cooked_block_sampled is not None
        mm = self.mm
        bound = NO_BOUND
        if seen is not None:
            # the bound is read once the blocks to encode are seen ready: every packet in them was
            # decided by then (kstap/capture/flowtable.py); every cooked frame is keyed as the kernel
            # keys it (from its network header), so the bound holds for all of them
            limit = self._count_ready(limit)
            if not limit:
                return [], 0, 0
            bound = seen.lookup_bound()

        def encode(base: int, left: int, out: bytearray, pos: int) -> tuple[bytearray, int, int, int]:
            if seen is None and wanted is None:
                assert encode_cooked_block is not None
                out, n, cap, _read, dups, end = encode_cooked_block(mm, base, self._bsize, 0, left, self._table,
                                                                    self._window_ns, out, pos)
                self._c_duplicates += dups
                return out, n, cap, end
            assert encode_cooked_block_sampled is not None
            if seen is None:
                out, n, cap, _read, dups, *_, end, _no_table = encode_cooked_block_sampled(
                    mm, base, self._bsize, 0, left, self._table, self._window_ns, None, 0, b"", wanted,
                    NO_SHED, 0, b"", NO_BOUND, out, pos)
                self._c_duplicates += dups
                return out, n, cap, end
            out, n, cap, _read, dups, fresh, _full, shed, keyed, cut, end, seen.table = encode_cooked_block_sampled(
                mm, base, self._bsize, 0, left, self._table, self._window_ns, seen.table, seen.seed, seen.suffix,
                wanted, seen.shed_threshold, seen.shed_ns, seen.shed_suffix, bound, out, pos)
            self._c_duplicates += dups
            seen.flows_seen += fresh
            seen.flows_shed += shed
            seen.packets_keyed += keyed
            seen.keys_cut += cut
            return out, n, cap, end

        chunks, packets, nbytes = self._encode_ready(max_packets, limit, encode)
        self._stats.delivered += packets
        return chunks, packets, nbytes

    def drain(self, retire_ms: int) -> list[PacketRecord]:
        """At stop: take the ready blocks, and the partly filled one once it is retired."""
        self._stop_waking()  # the stop flag's pipe stays readable: polling it would spin until the deadline
        return drain_blocks([self], self.read, retire_ms)

    # -- counters --------------------------------------------------------------------------------
    def stats(self) -> list[SourceStats]:
        """Kernel counters (they reset on every read) folded in, plus the copies removed."""
        fold_counters(self.sock, self._stats)
        self._stats.duplicates = (self.dedup.removed if self.dedup is not None else 0) + self._c_duplicates
        return [self._stats]

    def interface_name(self, ifindex: int) -> str:
        return self.links.name(ifindex) if self.links is not None else f"if{ifindex}"

    def close(self) -> None:
        if self.links is not None:
            self.links.close()
        with contextlib.suppress(AttributeError, BufferError):
            self.mm.close()
        with contextlib.suppress(OSError):
            self.sock.close()
