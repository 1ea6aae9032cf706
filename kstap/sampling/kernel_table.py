"""The in-kernel flow table: an eBPF socket filter that decides each flow once, at its first packet.

Behind the user's expression (translated from classic BPF, :mod:`kstap.filters.cbpf_to_ebpf`) the
program computes the flow key and seeded symmetric hash of the classic sampling tail — the same
classic code (:func:`kstap.sampling.flowhash.hash_tail`: VLANs, VXLAN/Geneve inner packets, length
checks), translated too, so both kernel paths and :func:`~kstap.sampling.flowhash.flow_hash` agree
by construction — and looks the flow up in an LRU hash map keyed by that hash:

- not there (or idle past the timeout): decide now, ``keep = hash < threshold`` with the
  threshold in force (read from the settings map user space updates), and store the decision;
- there: keep or drop as decided, and refresh its last-seen time.

A later rise of the threshold therefore never admits a flow mid-way, and a cut never ends a kept
one. The settings map also carries the shed set of an emergency: every flow decided before the
shed (``epoch < shed_epoch``) with ``hash >= shed_threshold`` is turned to "drop" at its next
packet. Flows are keyed by their 32-bit hash: two flows that share one share a decision, which is
what the classic threshold filter does too (hash-based selection picks hashes, not flows).

Maps (all owned by :class:`KernelFlowTable`):
    settings  array[1] of {u64 threshold, u64 shed_threshold, u64 shed_epoch, u64 idle_ns}
    counters  array[1] of {u64 flows_kept, u64 flows_dropped, u64 packets_dropped, u64 flows_shed}
    flows     lru_hash u32 hash → {u32 state (1 keep, 2 drop), u32 epoch, u64 last_ns}
    newest    array[possible CPUs] of u64, mmap-able: element i is the CLOCK_MONOTONIC time of CPU
              i's latest decision to keep a new flow (user space takes the maximum: a packet the ring
              stamped well after it is no flow's first packet, see
              :class:`kstap.capture.flowtable.FirstPacketTable`)

Each CPU writes only its own ``newest`` element (keyed by bpf_get_smp_processor_id; the filter runs
with preemption off), with a plain store of the time it read at the top of the decision
(bpf_ktime_get_ns is monotonic across CPUs), so no two writers race and the maximum never goes
back; the packet itself is written to the ring after the filter returns. User space reads the
array through a shared mapping: a system call per batch of blocks measured ~150 µs of CPU in a
busy capture loop (softirq work lands on it), as much as the lookups it saves.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from kstap.filters import bpf_syscall as sys_bpf
from kstap.filters import ebpf_asm as e
from kstap.filters.cbpf_to_ebpf import SCRATCH_BASE, translate
from kstap.sampling.flowhash import FULL, M_HASH, M_KEYED, hash_tail, threshold

Insn = tuple[int, int, int, int]

KEEP, DROP = 1, 2
SETTINGS = struct.Struct("<QQQQ")
COUNTERS = struct.Struct("<QQQQ")
FLOW = struct.Struct("<IIQ")
DEFAULT_FLOWS = 1 << 18
"""LRU capacity: 262,144 flows x ~64 bytes of kernel memory each ≈ 16 MiB, locked. Past it the
least recently seen flow is forgotten; if it comes back it is decided anew (as a new flow)."""


@dataclass(frozen=True)
class Layout:
    """Where the network header is in what the socket's filter sees, per capture socket type.

    ``ethernet``: an Ethernet frame (SOCK_RAW on an Ethernet device): ethertype at 12, up to two
    802.1Q/802.1ad tags still in the frame are skipped (the kernel usually strips the outer one
    into metadata first). ``sll``/``sll2``: Linux cooked headers (16 / 20 bytes, protocol at 14 /
    0). ``network``: the filter sees the network header at offset 0 (SOCK_DGRAM, raw IP devices);
    the protocol is the sk_buff's. Other link layers go through the classic path.
    """

    kind: str = "ethernet"

    @property
    def ethertype_at(self) -> int | None:
        """Offset of the link header's protocol field (None: the sk_buff's protocol)."""
        return {"ethernet": 12, "sll": 14, "sll2": 0}.get(self.kind)

    @property
    def network_at(self) -> int:
        """Offset of the network header (before any VLAN tag)."""
        return {"ethernet": 14, "sll": 16, "sll2": 20}.get(self.kind, 0)

    @classmethod
    def for_linktype(cls, linktype: int) -> Layout:
        kinds = {1: "ethernet", 113: "sll", 276: "sll2", 101: "network", 12: "network"}
        if linktype not in kinds:
            raise ValueError(f"no in-kernel flow table for link type {linktype}")
        return cls(kinds[linktype])


# stack slots (fp-relative); the translated classic programs' scratch words sit at -128..-65
S_KEY, S_ZERO, S_CPU, S_VAL = -20, -24, -28, -48


def _decide(a: e.Asm, settings_fd: int, counters_fd: int, flows_fd: int, newest_fd: int, snaplen: int) -> None:
    """R8 = flow hash → keep (return snaplen) or drop (0), deciding new flows once."""
    a.stx(e.W, e.FP, S_KEY, e.R8)
    a.call(e.KTIME_GET_NS)
    a.mov64r(e.R9, e.R0)  # R9 = now
    a.st(e.W, e.FP, S_ZERO, 0)
    a.ld_map_fd(e.R1, settings_fd)
    a.mov64r(e.R2, e.FP)
    a.alu64(e.ADD, e.R2, S_ZERO)
    a.call(e.MAP_LOOKUP_ELEM)
    a.jmp(e.JEQ, e.R0, 0, "keep")  # (an array's element 0 always exists)
    a.mov64r(e.R7, e.R0)  # R7 = settings
    a.ld_map_fd(e.R1, flows_fd)
    a.mov64r(e.R2, e.FP)
    a.alu64(e.ADD, e.R2, S_KEY)
    a.call(e.MAP_LOOKUP_ELEM)
    a.jmp(e.JEQ, e.R0, 0, "decide")
    # a known flow: forgotten if idle past the timeout, else as decided (unless shed)
    a.ldx(e.DW, e.R1, e.R0, 8)
    a.mov64r(e.R2, e.R9)
    a.alu64r(e.SUB, e.R2, e.R1)
    a.ldx(e.DW, e.R3, e.R7, 24)
    a.jmpr(e.JGT, e.R2, e.R3, "decide")
    a.stx(e.DW, e.R0, 8, e.R9)
    a.ldx(e.W, e.R1, e.R0, 0)
    a.jmp(e.JNE, e.R1, KEEP, "drop")
    a.ldx(e.W, e.R2, e.R0, 4)
    a.ldx(e.DW, e.R3, e.R7, 16)
    a.jmpr(e.JGE, e.R2, e.R3, "keep")  # decided after the last shed
    a.ldx(e.DW, e.R3, e.R7, 8)
    a.jmpr(e.JLT, e.R8, e.R3, "keep")
    # shed: dropped from now on; this last packet goes through, for user space to mark it
    a.st(e.W, e.R0, 0, DROP)
    a.mov64(e.R1, 24)
    a.stx(e.DW, e.FP, S_VAL, e.R1)
    a.mov64(e.R1, 0)
    a.stx(e.DW, e.FP, S_VAL + 8, e.R1)  # verdict: keep
    a.ja("count")
    # a new flow: decide with the threshold in force
    a.label("decide")
    a.ldx(e.DW, e.R1, e.R7, 0)
    a.st(e.W, e.FP, S_VAL, DROP)
    a.jmpr(e.JGE, e.R8, e.R1, "store")
    a.st(e.W, e.FP, S_VAL, KEEP)
    a.label("store")
    a.ldx(e.DW, e.R1, e.R7, 16)
    a.stx(e.W, e.FP, S_VAL + 4, e.R1)
    a.stx(e.DW, e.FP, S_VAL + 8, e.R9)
    a.ld_map_fd(e.R1, flows_fd)
    a.mov64r(e.R2, e.FP)
    a.alu64(e.ADD, e.R2, S_KEY)
    a.mov64r(e.R3, e.FP)
    a.alu64(e.ADD, e.R3, S_VAL)
    a.mov64(e.R4, 0)
    a.call(e.MAP_UPDATE_ELEM)
    a.ldx(e.W, e.R0, e.FP, S_VAL)
    a.mov64(e.R1, 0)
    a.stx(e.DW, e.FP, S_VAL, e.R1)  # counter 0 (flows kept), verdict keep
    a.stx(e.DW, e.FP, S_VAL + 8, e.R1)
    a.jmp(e.JEQ, e.R0, KEEP, "kept_new")
    a.mov64(e.R1, 8)  # counter 1 (flows dropped), verdict drop
    a.ja("verdict_drop")
    # a new kept flow: this CPU's newest decision time (its own element, so no other writer)
    a.label("kept_new")
    a.call(e.GET_SMP_PROCESSOR_ID)
    a.stx(e.W, e.FP, S_CPU, e.R0)
    a.ld_map_fd(e.R1, newest_fd)
    a.mov64r(e.R2, e.FP)
    a.alu64(e.ADD, e.R2, S_CPU)
    a.call(e.MAP_LOOKUP_ELEM)
    a.jmp(e.JEQ, e.R0, 0, "count")
    a.stx(e.DW, e.R0, 0, e.R9)
    a.ja("count")
    a.label("drop")
    a.mov64(e.R1, 16)  # counter 2 (packets dropped), verdict drop
    a.label("verdict_drop")
    a.stx(e.DW, e.FP, S_VAL, e.R1)
    a.stx(e.DW, e.FP, S_VAL + 8, e.R1)
    # counters[fp+S_VAL / 8] += 1, then keep (verdict 0) or drop
    a.label("count")
    a.ld_map_fd(e.R1, counters_fd)
    a.mov64r(e.R2, e.FP)
    a.alu64(e.ADD, e.R2, S_ZERO)
    a.call(e.MAP_LOOKUP_ELEM)
    a.jmp(e.JEQ, e.R0, 0, "out")
    # one atomic add at a constant offset per counter: a variable offset into the map value is
    # pointer arithmetic, which the verifier refuses without CAP_PERFMON (Spectre v1 hardening), and
    # a worker holds only NET_RAW and BPF
    a.ldx(e.DW, e.R2, e.FP, S_VAL)
    a.mov64(e.R1, 1)
    for off in (0, 8, 16):
        a.jmp(e.JEQ, e.R2, off, f"count{off}")
    a.raw(e.STX | 0xC0 | e.DW, e.R0, e.R1, 24, 0)  # atomic add
    a.ja("out")
    for off in (0, 8, 16):
        a.label(f"count{off}")
        a.raw(e.STX | 0xC0 | e.DW, e.R0, e.R1, off, 0)
        if off != 16:
            a.ja("out")
    a.label("out")
    a.ldx(e.DW, e.R1, e.FP, S_VAL + 8)
    a.jmp(e.JEQ, e.R1, 0, "keep")
    a.ret(0)
    a.label("keep")
    a.ret(snaplen)


def generate(filter_insns: Sequence[Insn], seed: int, layout: Layout, *, settings_fd: int, counters_fd: int,
             flows_fd: int, newest_fd: int) -> bytes:
    """The whole socket filter: the user's classic filter, then the flow hash and the decision."""
    snaplen = max((k for code, _, _, k in filter_insns if code == 0x06 and k), default=262144)
    a = e.Asm()
    a.mov64r(e.R6, e.R1)  # R6 = the sk_buff, as the legacy packet loads want
    translate(filter_insns, a, "sample")
    a.label("sample")
    # the classic tail's own flow key and hash (tunnels, length checks and all), translated
    translate(hash_tail(seed, snaplen, ethertype_at=layout.ethertype_at, network_at=layout.network_at), a,
              "hashed", prefix="h")
    a.label("hashed")
    a.ldx(e.W, e.R0, e.FP, SCRATCH_BASE + 4 * M_KEYED)
    a.jmp(e.JEQ, e.R0, 0, "keep")  # no flow (not IP, truncated): always kept
    a.ldx(e.W, e.R8, e.FP, SCRATCH_BASE + 4 * M_HASH)
    _decide(a, settings_fd, counters_fd, flows_fd, newest_fd, snaplen)
    return a.build()


@dataclass
class KernelStats:
    flows_kept: int = 0
    flows_dropped: int = 0
    packets_dropped: int = 0
    flows_shed: int = 0


class KernelFlowTable:
    """The maps and the loaded program; the controller's rate reaches the kernel through here."""

    def __init__(self, seed: int, rate: float, *, idle_timeout_ns: int = 60_000_000_000,
                 max_flows: int = DEFAULT_FLOWS) -> None:
        self.seed = seed
        self.idle_timeout_ns = idle_timeout_ns
        self.maps: list[sys_bpf.Map] = []
        try:
            self.settings = self._map(sys_bpf.MAP_TYPE_ARRAY, 4, SETTINGS.size, 1, "kstap_settings")
            self.counters = self._map(sys_bpf.MAP_TYPE_ARRAY, 4, COUNTERS.size, 1, "kstap_counters")
            self.flows = self._map(sys_bpf.MAP_TYPE_LRU_HASH, 4, FLOW.size, max_flows, "kstap_flows")
            self.newest, self._newest_view = self._newest_map()
            self._newest_values = struct.Struct(f"<{self.newest.max_entries}Q")
        except BaseException:
            self.close()
            raise
        self.threshold = threshold(rate)
        self.shed_threshold = FULL
        self.shed_epoch = 0
        self._write()

    def _map(self, kind: int, ksize: int, vsize: int, entries: int, name: str, flags: int = 0) -> sys_bpf.Map:
        m = sys_bpf.Map.create(kind, ksize, vsize, entries, name, flags)
        self.maps.append(m)
        return m

    def _newest_map(self) -> tuple[sys_bpf.Map, mmap.mmap | None]:
        """The per-CPU newest-decision times, mapped; a kernel before 5.5 gets the array unmapped (the
        program still writes it) and user space looks every packet up, as without it."""
        cpus = sys_bpf.possible_cpus()
        try:
            m = self._map(sys_bpf.MAP_TYPE_ARRAY, 4, 8, cpus, "kstap_newest", sys_bpf.F_MMAPABLE)
            return m, m.mapped()
        except OSError:
            return self._map(sys_bpf.MAP_TYPE_ARRAY, 4, 8, cpus, "kstap_newest"), None

    def _write(self) -> None:
        self.settings.update(b"\0\0\0\0", SETTINGS.pack(self.threshold, self.shed_threshold, self.shed_epoch,
                                                        self.idle_timeout_ns))

    def program(self, filter_insns: Sequence[Insn], layout: Layout) -> int:
        """Load the filter for one socket type; returns the program fd (the caller closes it)."""
        code = generate(filter_insns, self.seed, layout, settings_fd=self.settings.fd,
                        counters_fd=self.counters.fd, flows_fd=self.flows.fd, newest_fd=self.newest.fd)
        return sys_bpf.load_socket_filter(code, "kstap_flows")

    def refused_by_kernel(self) -> str | None:
        """Why this kernel (or this process's capabilities) will not load the program, else None: a
        trial load behind an accept-all filter, before a capture depends on it."""
        try:
            os.close(self.program(((0x06, 0, 0, 262144),), Layout("ethernet")))
        except sys_bpf.BpfError as exc:
            return f"the kernel refused the flow-table program: {exc.why}"
        return None

    def attach(self, sock: socket.socket, insns: Sequence[Insn], linktype: int) -> None:
        """:class:`kstap.filters.bpf.SocketAttacher`: the flow table behind ``insns`` on ``sock``
        (the socket holds the program; this process keeps only the maps)."""
        # a SOCK_DGRAM packet socket (cooked capture, e.g. -i any) hands its filter the network
        # header at offset 0 whatever the link type says the file gets
        layout = Layout("network") if sock.type == socket.SOCK_DGRAM else Layout.for_linktype(linktype)
        try:
            fd = self.program(insns, layout)
        except sys_bpf.BpfError as exc:
            from kstap.errors import EnvironmentProblem

            raise EnvironmentProblem(f"the kernel refused the in-kernel flow table's filter: {exc.why}",
                                     hint="set sampling.flow_table = user (KSTAP_SAMPLING_FLOW_TABLE=user)") from exc
        try:
            sys_bpf.attach(sock, fd)
        finally:
            os.close(fd)

    def refusal(self, insns: Sequence[Insn], linktype: int) -> str | None:
        """Why a filter cannot go in front of the table on this link type (None: it can)."""
        from kstap.filters.cbpf_to_ebpf import Untranslatable

        try:
            generate(insns, self.seed, Layout.for_linktype(linktype), settings_fd=self.settings.fd,
                     counters_fd=self.counters.fd, flows_fd=self.flows.fd, newest_fd=self.newest.fd)
        except (Untranslatable, ValueError) as exc:
            return str(exc)
        return None

    def set_rate(self, rate: float) -> None:
        """New flows from now on are decided against this rate; live ones keep their decision."""
        self.threshold = threshold(rate)
        self._write()

    def shed(self, rate: float) -> None:
        """Emergency: live kept flows with hash ≥ the rate's threshold stop at their next packet, which
        still goes through (user space marks it, see ``encode_block_sampled``)."""
        self.threshold = threshold(rate)
        self.shed_threshold = self.threshold
        self.shed_epoch += 1
        self._write()

    def stats(self) -> KernelStats:
        raw = self.counters.lookup(b"\0\0\0\0")
        return KernelStats(*COUNTERS.unpack(raw)) if raw else KernelStats()

    def decision(self, flow_hash: int) -> int | None:
        """KEEP, DROP or None (not in the table): for tests and ``--debug``."""
        raw = self.flows.lookup(struct.pack("<I", flow_hash))
        return FLOW.unpack(raw)[0] if raw else None

    def newest_kept_ns(self) -> int | None:
        """:class:`kstap.contracts.FlowDecisions`: when (CLOCK_MONOTONIC ns) the kernel last decided to
        keep a new flow, on any CPU; 0 before the first; None when this kernel cannot map the array."""
        view = self._newest_view
        if view is None:
            return None
        return int(max(self._newest_values.unpack_from(view)))

    def last_seen_ns(self, flow_hash: int) -> int | None:
        """:class:`kstap.contracts.FlowDecisions`: when (CLOCK_MONOTONIC ns) the kernel last saw a
        packet of the flow of this hash, kept or dropped; None when the flow is not in its table
        (never seen, or forgotten by the LRU)."""
        raw = self.flows.lookup(struct.pack("<I", flow_hash))
        return int(FLOW.unpack(raw)[2]) if raw is not None else None

    def close(self) -> None:
        view, self._newest_view = getattr(self, "_newest_view", None), None
        if view is not None:
            view.close()
        for m in self.maps:
            m.close()
        self.maps = []


def open_table(choice: str, seed: int, rate: float, *, idle_timeout_ns: int, why_not: str | None = None,
               why_not_hint: str | None = None) -> tuple[KernelFlowTable | None, str | None]:
    """The kernel table for a run, or None and why not (then the classic ceiling is the fallback).

    ``choice`` is the ``sampling.flow_table`` setting; ``why_not`` is a reason the caller already
    knows the capture cannot use it (another backend, several workers), ``why_not_hint`` what to do
    about it. ``kernel`` turns a reason into an error.
    """
    from kstap.errors import EnvironmentProblem

    if choice == "user":
        return None, None
    reason = why_not or sys_bpf.probe()
    table = None
    if reason is None:
        try:
            table = KernelFlowTable(seed, rate, idle_timeout_ns=idle_timeout_ns)
        except OSError as exc:
            reason = f"cannot create the flow-table maps: {exc.strerror or exc}"
    if table is not None:
        reason = table.refused_by_kernel()
        if reason is not None:
            table.close()
            table = None
    if table is None and choice == "kernel":
        raise EnvironmentProblem(f"the in-kernel flow table is not available: {reason}",
                                 hint=(why_not_hint if why_not and why_not_hint else
                                       "grant CAP_BPF (or run as root), or set sampling.flow_table = user "
                                       "(KSTAP_SAMPLING_FLOW_TABLE=user)"))
    return table, reason
