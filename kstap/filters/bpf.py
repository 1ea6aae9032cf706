"""Compile BPF filter expressions with libpcap and shape the result for a socket.

A :class:`Program` is a plain list of classic BPF instructions; it can be printed like
``tcpdump -d``, run in user space (offline files) or attached to an AF_PACKET socket.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from kstap.errors import Interrupted, UsageError
from kstap.filters import libpcap
from kstap.model import LINKTYPE_ETHERNET

T = TypeVar("T")

BPF_MAXINSNS = 4096
"""The kernel's limit for a classic socket filter (include/uapi/linux/filter.h)."""

SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
SKF_AD_IFINDEX = 8
SKF_AD_HATYPE = 28
LINKTYPE_LINUX_SLL2 = 276
SLL2_HEADER = 20
_SLL2_FIELDS = {0: SKF_AD_PROTOCOL, 4: SKF_AD_IFINDEX, 8: SKF_AD_HATYPE, 10: SKF_AD_PKTTYPE}
"""SLL2 header offsets a filter may load → the ancillary load that gives the same value on a
cooked socket (where the header is built in user space and the kernel filter never sees it)."""
PACKET_OUTGOING = 4
LINKTYPE_TO_DLT = {101: 12}
"""pcap_open_dead takes a DLT: LINKTYPE_RAW (files, ARPHRD_NONE) is DLT_RAW, 12 on Linux."""

Insn = tuple[int, int, int, int]
"""(code, jt, jf, k), the fields of struct sock_filter."""


class SocketAttacher(Protocol):
    """Attaches a program other than the classic one (the in-kernel flow table's eBPF filter)."""

    def attach(self, sock: socket.socket, insns: Sequence[Insn], linktype: int) -> None:
        """Put a filter built from the classic ``insns`` (the user's expression) on ``sock``."""


@dataclass(frozen=True)
class Program:
    """A compiled filter: the expression it came from and its instructions."""

    expression: str
    linktype: int
    snaplen: int
    insns: tuple[Insn, ...]
    cooked: bool = False
    """The instructions run on a cooked (SOCK_DGRAM) socket: packet loads are relative to the
    network header (see :func:`for_cooked_socket`)."""
    attacher: SocketAttacher | None = field(default=None, compare=False)
    """When set, sockets get the attacher's program (built from ``insns``) instead of ``insns``."""

    def image(self) -> list[str]:
        """The program as ``tcpdump -d`` prints it (libpcap's own bpf_image)."""
        arr = _to_array(self.insns)
        return [
            libpcap.lib().bpf_image(ctypes.byref(arr[i]), i).decode() for i in range(len(self.insns))
        ]

    def sock_fprog(self) -> tuple[bytes, ctypes.Array[libpcap.BpfInsn]]:
        """struct sock_fprog for SO_ATTACH_FILTER, and the array it points to (keep it alive)."""
        arr = _to_array(self.insns)
        fprog = struct.pack("HL", len(self.insns), ctypes.addressof(arr))
        return fprog, arr

    def without_outgoing(self) -> Program:
        """The same program, but rejecting packets the host sends (PACKET_OUTGOING) in the kernel.

        On a loopback device every packet is seen twice, once leaving and once arriving; libpcap
        drops the outgoing copy in user space, this does it before the packet is copied.
        """
        head: tuple[Insn, ...] = (
            (0x30, 0, 0, (SKF_AD_OFF + SKF_AD_PKTTYPE) & 0xFFFFFFFF),  # ldb [pkttype]
            (0x15, 0, 1, PACKET_OUTGOING),  # jeq #OUTGOING, jt=next (reject), jf=skip
            (0x06, 0, 0, 0),  # ret #0
        )
        return replace(self, insns=head + self.insns)

    def with_insns(self, insns: tuple[Insn, ...]) -> Program:
        """The same program description with other instructions (a spliced sampling tail)."""
        return replace(self, insns=insns)

    def matches(self, data: bytes, wirelen: int) -> bool:
        """Run the program on one packet in user space (pcap_offline_filter)."""
        arr = _to_array(self.insns)
        prog = libpcap.BpfProgram(len(self.insns), ctypes.cast(arr, ctypes.POINTER(libpcap.BpfInsn)))
        hdr = libpcap.PcapPkthdr(libpcap.Timeval(0, 0), len(data), wirelen)
        return bool(libpcap.lib().pcap_offline_filter(ctypes.byref(prog), ctypes.byref(hdr), data))


def _to_array(insns: tuple[Insn, ...]) -> ctypes.Array[libpcap.BpfInsn]:
    arr = (libpcap.BpfInsn * len(insns))()
    for i, (code, jt, jf, k) in enumerate(insns):
        arr[i] = libpcap.BpfInsn(code, jt, jf, k)
    return arr


def compile_filter(
    expression: str,
    *,
    linktype: int = LINKTYPE_ETHERNET,
    snaplen: int = 262144,
    optimize: bool = True,
) -> Program:
    """Compile ``expression`` for ``linktype``; raise :class:`UsageError` with libpcap's message.

    On the main thread libpcap runs in a helper thread while this one waits, so Ctrl-C (a signal
    handler) is heard at once: a long expression (1,500 ports) takes libpcap's optimizer minutes,
    and tcpdump stops at once.
    """
    return interruptibly(lambda: _compile(expression, linktype, snaplen, optimize))


def interruptibly(call: Callable[[], T]) -> T:
    """``call()`` in a daemon thread, the main thread waiting in short joins (signal handlers run)."""
    if threading.current_thread() is not threading.main_thread():
        return call()
    outcome: list[tuple[bool, object]] = []

    def target() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the waiting thread
            outcome.append((False, exc))

    worker = threading.Thread(target=target, name="kstap-compile", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.05)  # a signal handler's exception leaves here; the thread is abandoned
    except KeyboardInterrupt:
        raise Interrupted("interrupted while compiling the filter", hint="nothing was written") from None
    ok, value = outcome[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


def _compile(expression: str, linktype: int, snaplen: int, optimize: bool) -> Program:
    pcap = libpcap.lib()
    handle = pcap.pcap_open_dead(LINKTYPE_TO_DLT.get(linktype, linktype), snaplen)
    if not handle:
        raise UsageError(f"libpcap cannot open a handle for link type {linktype}",
                         hint="this libpcap does not know that link type; kstap filter -f EXPR uses Ethernet")
    try:
        prog = libpcap.BpfProgram()
        rc = pcap.pcap_compile(
            handle, ctypes.byref(prog), expression.encode(), int(optimize), libpcap.PCAP_NETMASK_UNKNOWN
        )
        if rc != 0:
            reason = pcap.pcap_geterr(handle).decode(errors="replace")
            raise UsageError(
                f"invalid BPF filter {expression!r}: {reason}",
                hint="the filter uses pcap-filter(7) syntax, e.g. 'tcp and (port 80 or port 8080)'",
            )
        try:
            insns = tuple(
                (prog.bf_insns[i].code, prog.bf_insns[i].jt, prog.bf_insns[i].jf, prog.bf_insns[i].k)
                for i in range(prog.bf_len)
            )
        finally:
            pcap.pcap_freecode(ctypes.byref(prog))
    finally:
        pcap.pcap_close(handle)
    if len(insns) > BPF_MAXINSNS:
        raise UsageError(
            f"the filter compiles to {len(insns)} BPF instructions; the kernel accepts {BPF_MAXINSNS}",
            hint="simplify the expression (fewer hosts/ports, or use a network: 'net 10.0.0.0/16')",
        )
    return Program(expression, linktype, snaplen, insns)


def for_cooked_socket(program: Program) -> Program:
    """A program compiled for LINKTYPE_LINUX_SLL2, rewritten to run on a cooked packet socket.

    The kernel runs a SOCK_DGRAM socket's filter on the packet from its network header; the SLL2
    header exists only in what user space writes. As libpcap's ``fix_offset`` does, packet loads
    past the header move back by its 20 bytes, and loads of its protocol, ifindex, hatype and
    packet type become ancillary loads. Any other load of the header (its address) cannot run in
    the kernel: a usage error.
    """
    if program.linktype != LINKTYPE_LINUX_SLL2 or program.cooked:
        return program
    out: list[Insn] = []
    for code, jt, jf, k in program.insns:
        cls, mode = code & 0x07, code & 0xE0
        if cls in (0x00, 0x01) and mode in (0x20, 0x40, 0xA0):  # ld/ldx: abs, ind, msh
            if k >= SLL2_HEADER:
                k -= SLL2_HEADER
            elif mode == 0x20 and k in _SLL2_FIELDS:
                k = (SKF_AD_OFF + _SLL2_FIELDS[k]) & 0xFFFFFFFF
            else:
                raise UsageError(f"the filter {program.expression!r} reads the cooked header's bytes {k}+, "
                                 "which a cooked socket's kernel filter cannot see",
                                 hint="filter on addresses, ports, 'inbound'/'outbound' or 'ifindex N' instead")
        out.append((code, jt, jf, k))
    return Program(program.expression, program.linktype, program.snaplen, tuple(out), True)


def final_expression(bpf_filter: str | None) -> str:
    """The expression kstap compiles for a local capture (later issues add target hosts)."""
    return (bpf_filter or "").strip()
