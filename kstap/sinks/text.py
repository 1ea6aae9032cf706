"""One line per packet on stdout, in tcpdump's spirit, when no -w file is given."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import TextIO

import dpkt

from kstap.errors import OutputClosed, OutputFailed
from kstap.linklayer import ETH_IPV4, ETH_IPV6, network
from kstap.model import LINKTYPE_ETHERNET, PacketRecord


def _addr(raw: bytes) -> str:
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw)


def describe(rec: PacketRecord, linktype: int = LINKTYPE_ETHERNET) -> str:
    """``HH:MM:SS.nnnnnnnnn IP a.port > b.port: UDP, length N`` — never raises on bad frames."""
    ts, caplen, origlen, data, _ifid, _worker = rec
    stamp = time.strftime("%H:%M:%S", time.localtime(ts // 1_000_000_000)) + f".{ts % 1_000_000_000:09d}"
    try:
        return f"{stamp} {_body(data, linktype, origlen)}"
    except Exception:  # dpkt raises anything on hostile input (AttributeError on some IPv6 headers, ...)
        return f"{stamp} [malformed frame, captured {caplen} of {origlen} bytes]"


def _body(data: bytes, linktype: int, origlen: int) -> str:
    if linktype != LINKTYPE_ETHERNET:  # cooked, raw, loopback, NFLOG: the one decoder finds the IP header
        etype, off = network(data, linktype, tunnels=False)
        if not etype:
            raise ValueError("link layer not decoded")  # → the malformed-frame line
        if etype not in (ETH_IPV4, ETH_IPV6):
            return f"link type {linktype}, ethertype 0x{etype:04x}, length {origlen}"
        ip: object = dpkt.ip.IP(data[off:]) if etype == ETH_IPV4 else dpkt.ip6.IP6(data[off:])
    else:
        eth = dpkt.ethernet.Ethernet(data)
        ip = eth.data
        if isinstance(ip, dpkt.arp.ARP):
            return f"ARP, {'Request' if ip.op == 1 else 'Reply'} who-has {_addr(ip.tpa)} tell {_addr(ip.spa)}"
        if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
            return f"ethertype 0x{eth.type:04x}, length {origlen}"
    assert isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6))
    fam = "IP" if isinstance(ip, dpkt.ip.IP) else "IP6"
    src, dst = _addr(ip.src), _addr(ip.dst)
    l4 = ip.data
    if isinstance(l4, dpkt.tcp.TCP):
        flags = "".join(c for bit, c in ((0x02, "S"), (0x01, "F"), (0x04, "R"), (0x08, "P")) if l4.flags & bit)
        flags += "." if l4.flags & 0x10 else ""
        return (f"{fam} {src}.{l4.sport} > {dst}.{l4.dport}: Flags [{flags or 'none'}], seq {l4.seq}, "
                f"length {len(l4.data)}")
    if isinstance(l4, dpkt.udp.UDP):
        return f"{fam} {src}.{l4.sport} > {dst}.{l4.dport}: UDP, length {max(0, l4.ulen - 8)}"
    if isinstance(l4, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)):
        return f"{fam} {src} > {dst}: ICMP type {l4.type} code {l4.code}, length {origlen}"
    return f"{fam} {src} > {dst}: proto {ip.p if fam == 'IP' else ip.nxt}, length {origlen}"


class TextLines:
    """Writes :func:`describe` lines to a text stream."""

    def __init__(self, stream: TextIO, linktypes: Sequence[int]) -> None:
        self.stream = stream
        self.linktypes = list(linktypes)

    def write(self, records: Sequence[PacketRecord]) -> None:
        lines = [describe(r, self.linktypes[r[4]] if r[4] < len(self.linktypes) else LINKTYPE_ETHERNET)
                 for r in records]
        if lines:
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except BrokenPipeError:  # | head: the reader has enough; stop quietly, as tcpdump does
                raise OutputClosed("packet lines") from None
            except OSError as exc:
                raise OutputFailed(f"cannot print packets on standard output: {exc.strerror or exc}",
                                   hint="send them to a file or a pipe that has room, or write -w FILE") from None
