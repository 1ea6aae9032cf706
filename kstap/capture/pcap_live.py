"""The libpcap backend: pcap_create/pcap_activate and pcap_next_ex through ctypes.

Slower per packet than the AF_PACKET ring (one ctypes call per packet) but it knows every link
type libpcap knows, and a PF_RING-enabled libpcap makes it the PF_RING backend.
"""

from __future__ import annotations

import ctypes
import select
import time

from kstap.capture import interfaces
from kstap.contracts import SourceCapabilities
from kstap.errors import EnvironmentProblem, KstapError, UsageError
from kstap.filters import libpcap
from kstap.filters.bpf import Program
from kstap.model import Interface, PacketRecord, SourceStats

LIBPCAP_HINT = "check the interface name (ip link) and that kstap runs as root or with CAP_NET_RAW"


class PcapLiveSource:
    """One pcap handle per interface; read() takes what is ready on each."""

    capabilities = SourceCapabilities()

    def __init__(self, names: list[str], expression: str, *, snaplen: int, buffer_bytes: int,
                 timeout_ms: int = 100) -> None:
        self._lib = libpcap.lib()
        self.expression = expression
        self._handles: list[ctypes.c_void_p] = []
        self.interfaces: list[Interface] = []
        self._stats = [SourceStats() for _ in names]
        self._timeout_ms = timeout_ms
        try:
            for name in names:
                if name != "any":  # libpcap's own cooked any device
                    interfaces.require(name)
                self._handles.append(self._open(name, snaplen, buffer_bytes))
        except BaseException:
            self.close()
            raise

    def _open(self, name: str, snaplen: int, buffer_bytes: int) -> ctypes.c_void_p:
        lib = self._lib
        errbuf = ctypes.create_string_buffer(libpcap.PCAP_ERRBUF_SIZE)
        h = lib.pcap_create(name.encode(), errbuf)
        if not h:
            raise KstapError(f"libpcap cannot open {name!r}: {errbuf.value.decode(errors='replace')}",
                             hint=LIBPCAP_HINT)
        lib.pcap_set_snaplen(h, snaplen)
        lib.pcap_set_promisc(h, 0)
        lib.pcap_set_timeout(h, self._timeout_ms)
        lib.pcap_set_buffer_size(h, buffer_bytes)
        lib.pcap_set_tstamp_precision(h, libpcap.PCAP_TSTAMP_PRECISION_NANO)
        rc = lib.pcap_activate(h)
        if rc < 0:
            msg = lib.pcap_geterr(h).decode(errors="replace") or lib.pcap_statustostr(rc).decode()
            lib.pcap_close(h)
            if rc == -8:  # PCAP_ERROR_PERM_DENIED
                raise EnvironmentProblem(f"capturing needs the CAP_NET_RAW capability ({msg})",
                                         hint="run as root, or: sudo setcap cap_net_raw,cap_net_admin=eip <python>")
            raise KstapError(f"libpcap cannot capture on {name!r}: {msg}", hint=LIBPCAP_HINT)
        self._handles.append(h)  # closed by close() even if the filter fails below
        prog = libpcap.BpfProgram()
        if lib.pcap_compile(h, ctypes.byref(prog), self.expression.encode(), 1,
                            libpcap.PCAP_NETMASK_UNKNOWN) != 0:
            raise UsageError(f"invalid BPF filter {self.expression!r}: "
                             f"{lib.pcap_geterr(h).decode(errors='replace')}",
                             hint="the filter uses pcap-filter(7) syntax; check it with kstap filter -f EXPR")
        try:
            if lib.pcap_setfilter(h, ctypes.byref(prog)) != 0:
                raise KstapError(f"cannot set the filter: {lib.pcap_geterr(h).decode(errors='replace')}",
                                 hint="check the filter with kstap filter -f EXPR -i IFACE")
        finally:
            lib.pcap_freecode(ctypes.byref(prog))
        # Non-blocking, polled by read(): a blocking pcap_next_ex waits in C (TPACKET_V3 polls
        # forever until a block fills or times out), so with no traffic SIGINT never got through.
        if lib.pcap_setnonblock(h, 1, errbuf) != 0:
            raise KstapError(f"libpcap cannot set non-blocking mode on {name!r}: "
                             f"{errbuf.value.decode(errors='replace')}", hint=LIBPCAP_HINT)
        self._handles.pop()
        self.interfaces.append(Interface(name, lib.pcap_datalink(h), snaplen, self.expression))
        return ctypes.c_void_p(h)

    def read(self, timeout_ms: int) -> list[PacketRecord]:
        out = self._take()
        if not out and timeout_ms > 0:
            poller = select.poll()
            for h in self._handles:
                poller.register(self._lib.pcap_get_selectable_fd(h), select.POLLIN)
            try:
                poller.poll(timeout_ms)
            except InterruptedError:
                return out
            out = self._take()
        return out

    def _take(self) -> list[PacketRecord]:
        out: list[PacketRecord] = []
        hdr = ctypes.POINTER(libpcap.PcapPkthdr)()
        data = ctypes.POINTER(ctypes.c_ubyte)()
        next_ex = self._lib.pcap_next_ex
        string_at = ctypes.string_at
        for if_id, h in enumerate(self._handles):
            for _ in range(4096):
                rc = next_ex(h, ctypes.byref(hdr), ctypes.byref(data))
                if rc != 1:
                    if rc == -1:
                        raise KstapError(f"libpcap: {self._lib.pcap_geterr(h).decode(errors='replace')}",
                                         hint=LIBPCAP_HINT)
                    break
                h0 = hdr.contents
                caplen = h0.caplen
                ts = h0.ts.tv_sec * 1_000_000_000 + h0.ts.tv_usec
                out.append((ts, caplen, h0.len, string_at(data, caplen), if_id, 0))
            self._stats[if_id].delivered += 0
        if len(self._handles) > 1:
            out.sort(key=lambda r: r[0])
        return out

    def drain(self, retire_ms: int) -> list[PacketRecord]:
        """At stop: wait for libpcap's partly filled block to time out and take what it holds."""
        deadline = time.monotonic() + (retire_ms + 30) / 1000
        out: list[PacketRecord] = []
        while (left := deadline - time.monotonic()) > 0:
            out.extend(self.read(max(1, int(left * 1000))))
        return out

    def stats(self) -> list[SourceStats]:
        st = libpcap.PcapStat()
        for if_id, h in enumerate(self._handles):
            if self._lib.pcap_stats(h, ctypes.byref(st)) == 0:
                self._stats[if_id].received = st.ps_recv
                self._stats[if_id].dropped = st.ps_drop
        return self._stats

    def close(self) -> None:
        for h in self._handles:
            self._lib.pcap_close(h)
        self._handles = []


def compile_for_live(name: str, expression: str, snaplen: int) -> Program:
    """Compile ``expression`` exactly as libpcap would for a live capture on ``name``.

    On Linux the kernel moves VLAN tags out of the frame before any packet socket sees it, and
    libpcap compiles ``vlan`` for a live handle with ancillary loads (SKF_AD_VLAN_TAG_PRESENT)
    instead of in-frame offsets. Only an activated handle on the interface knows that, so one is
    opened (with a tiny buffer) just to compile, then closed.
    """
    lib = libpcap.lib()
    interfaces.require(name)
    errbuf = ctypes.create_string_buffer(libpcap.PCAP_ERRBUF_SIZE)
    h = lib.pcap_create(name.encode(), errbuf)
    if not h:
        raise KstapError(f"libpcap cannot open {name!r}: {errbuf.value.decode(errors='replace')}",
                             hint=LIBPCAP_HINT)
    try:
        lib.pcap_set_snaplen(h, snaplen)
        lib.pcap_set_buffer_size(h, 1 << 16)
        rc = lib.pcap_activate(h)
        if rc < 0:
            msg = lib.pcap_geterr(h).decode(errors="replace") or lib.pcap_statustostr(rc).decode()
            if rc == -8:  # PCAP_ERROR_PERM_DENIED
                raise EnvironmentProblem(f"capturing needs the CAP_NET_RAW capability ({msg})",
                                         hint="run as root, or: sudo setcap cap_net_raw,cap_net_admin=eip <python>")
            raise KstapError(f"libpcap cannot capture on {name!r}: {msg}", hint=LIBPCAP_HINT)
        prog = libpcap.BpfProgram()
        if lib.pcap_compile(h, ctypes.byref(prog), expression.encode(), 1, libpcap.PCAP_NETMASK_UNKNOWN) != 0:
            raise UsageError(f"invalid BPF filter {expression!r}: {lib.pcap_geterr(h).decode(errors='replace')}",
                             hint="the filter uses pcap-filter(7) syntax, e.g. 'tcp and (port 80 or port 8080)'")
        try:
            insns = tuple((prog.bf_insns[i].code, prog.bf_insns[i].jt, prog.bf_insns[i].jf, prog.bf_insns[i].k)
                          for i in range(prog.bf_len))
        finally:
            lib.pcap_freecode(ctypes.byref(prog))
        return Program(expression, lib.pcap_datalink(h), snaplen, insns)
    finally:
        lib.pcap_close(h)


def needs_live_compile(expression: str) -> bool:
    """True when the live program differs from the offline one (the ``vlan`` keyword)."""
    return "vlan" in expression.replace("(", " ").replace(")", " ").split()
