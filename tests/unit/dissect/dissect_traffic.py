"""Builders for dissection tests: TCP conversations as real frames, and a stage that records entries.

A plain module (not conftest) so tests import it by a name no other directory uses."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import dpkt

from kstap.dissect.api import Entry
from kstap.dissect.stage import DissectStage
from kstap.model import PacketRecord

M32 = 0xFFFFFFFF
T0 = 1_700_000_000_000_000_000


def tcp_frame(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
              payload: bytes = b"", v6: bool = False) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq & M32, ack=ack & M32, flags=flags, win=65535,
                       data=payload)
    if v6:
        ip6 = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                           nxt=6, hlim=64, data=tcp)
        ip6.plen = len(tcp)
        return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x86DD, data=bytes(ip6)))
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, data=tcp)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=bytes(ip)))


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=17, ttl=64, data=udp)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=bytes(ip)))


@dataclass
class Conversation:
    """One TCP connection between a client and a server, written packet by packet."""

    client: str = "10.0.0.1"
    server: str = "10.0.0.2"
    cport: int = 40000
    sport: int = 80
    cseq: int = 1000
    sseq: int = 5000
    t: int = T0
    v6: bool = False
    step: int = 1_000_000  # 1 ms between packets
    records: list[PacketRecord] = field(default_factory=list)

    def _add(self, frame: bytes) -> PacketRecord:
        self.t += self.step
        rec = (self.t, len(frame), len(frame), frame, 0, 0)
        self.records.append(rec)
        return rec

    def c(self, flags: int, payload: bytes = b"", seq: int | None = None) -> PacketRecord:
        s = self.cseq if seq is None else seq
        return self._add(tcp_frame(self.client, self.server, self.cport, self.sport, s, self.sseq, flags, payload,
                                   self.v6))

    def s(self, flags: int, payload: bytes = b"", seq: int | None = None) -> PacketRecord:
        s = self.sseq if seq is None else seq
        return self._add(tcp_frame(self.server, self.client, self.sport, self.cport, s, self.cseq, flags, payload,
                                   self.v6))

    def handshake(self) -> Conversation:
        self.c(dpkt.tcp.TH_SYN)
        self.cseq += 1
        self.s(dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)
        self.sseq += 1
        self.c(dpkt.tcp.TH_ACK)
        return self

    def send(self, data: bytes, mss: int = 1448) -> Conversation:
        """Client → server, cut into segments."""
        for i in range(0, len(data), mss):
            self.c(dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, data[i : i + mss])
            self.cseq += len(data[i : i + mss])
        return self

    def reply(self, data: bytes, mss: int = 1448) -> Conversation:
        for i in range(0, len(data), mss):
            self.s(dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, data[i : i + mss])
            self.sseq += len(data[i : i + mss])
        return self

    def fin(self) -> Conversation:
        self.c(dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
        self.cseq += 1
        self.s(dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
        self.sseq += 1
        self.c(dpkt.tcp.TH_ACK)
        return self


@dataclass
class Run:
    stage: DissectStage
    entries: list[Entry]

    def feed(self, records: Iterable[PacketRecord], batch: int = 64) -> Run:
        recs = list(records)
        for i in range(0, len(recs), batch):
            self.stage.feed(recs[i : i + batch], [1])
        return self

    def close(self) -> list[Entry]:
        self.stage.close()
        return self.entries


def make_run(memory_cap: int = 64 << 20, flow_cap: int = 8 << 20, idle_timeout: float = 60.0, seed: int = 0) -> Run:
    entries: list[Entry] = []
    stage = DissectStage(seed=seed, memory_cap=memory_cap, flow_cap=flow_cap, idle_timeout=idle_timeout,
                         emit=entries.append)
    return Run(stage, entries)


def dns_query(name: str, qid: int, qtype: int = 1) -> bytes:
    return bytes(dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name=name, type=qtype)]))


def dns_response(name: str, qid: int, rcode: int = 0, answers: int = 1) -> bytes:
    r = dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name=name, type=1)], an=[], ns=[], ar=[])
    r.qr, r.rcode = 1, rcode
    r.an = [dpkt.dns.DNS.RR(name=name, type=1, cls=1, ttl=60, rlen=4, ip=struct.pack("!I", 0x0A000000 + i))
            for i in range(answers)]
    return bytes(r)
