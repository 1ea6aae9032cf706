"""``kstap dissect`` reads through every link type and tunnel the one frame decoder knows: the same
HTTP and DNS traffic as Linux cooked v1/v2, BSD null, raw IP, NFLOG, VLAN/QinQ, VXLAN and Geneve
gives exactly the entries (flow ids included) it gives as plain Ethernet."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import dpkt
import pytest
from dissect_traffic import Conversation, dns_query, dns_response, udp_frame

from kstap.cli.main import run
from tests.conftest import make_pcap_bytes


def traffic() -> list[tuple[int, bytes]]:
    c = Conversation().handshake()
    c.send(b"GET /hello HTTP/1.1\r\nHost: example.test\r\n\r\n")
    c.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    c.send(b"POST /form HTTP/1.1\r\nHost: example.test\r\nContent-Length: 3\r\n\r\nabc")
    c.reply(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    c.fin()
    out = [(r[0], r[3]) for r in c.records]
    for i, name in enumerate(("a.test", "b.test")):
        out.append((c.t + 2000 * i + 1000, udp_frame("10.0.0.1", "10.0.0.53", 5400 + i, 53, dns_query(name, 9 + i))))
        out.append((c.t + 2000 * i + 1500, udp_frame("10.0.0.53", "10.0.0.1", 53, 5400 + i, dns_response(name, 9 + i))))
    return out


def sll(frame: bytes) -> bytes:
    return struct.pack("!HHH8sH", 0, 1, 6, frame[6:12] + b"\0\0", 0x0800) + frame[14:]


def sll2(frame: bytes) -> bytes:
    return struct.pack("!HHIHBB8s", 0x0800, 0, 7, 1, 0, 6, frame[6:12] + b"\0\0") + frame[14:]


def nflog(frame: bytes) -> bytes:
    ip = frame[14:]
    prefix = b"kstap\0\0\0"
    return (struct.pack("!BBH", 2, 0, 3) + struct.pack("<HH", 4 + len(prefix), 10) + prefix
            + struct.pack("<HH", 4 + len(ip), 9) + ip + b"\0" * (-len(ip) % 4))


def udp_tunnel(frame: bytes, dport: int, head: bytes) -> bytes:
    u = dpkt.udp.UDP(sport=33000, dport=dport, data=head + frame)
    u.ulen = len(u)
    ip = dpkt.ip.IP(src=b"\xc0\xa8\0\x01", dst=b"\xc0\xa8\0\x02", p=17, data=u)
    return b"\x06" * 6 + b"\x08" * 6 + b"\x08\x00" + bytes(ip)


KINDS: dict[str, tuple[int, Callable[[bytes], bytes]]] = {
    "sll": (113, sll),
    "sll2": (276, sll2),
    "null": (0, lambda f: struct.pack("<I", 2) + f[14:]),
    "raw": (101, lambda f: f[14:]),
    "nflog": (239, nflog),
    "vlan": (1, lambda f: f[:12] + b"\x81\x00\x00\x0a" + f[12:]),
    "qinq": (1, lambda f: f[:12] + b"\x88\xa8\x00\x14\x81\x00\x00\x0a" + f[12:]),
    "vxlan": (1, lambda f: udp_tunnel(f, 4789, struct.pack("!BxxxI", 0x08, 42 << 8))),
    "geneve": (1, lambda f: udp_tunnel(f, 6081, struct.pack("!BBHI", 1, 0, 0x6558, 42 << 8) + b"\0" * 4)),
}


def entries(path: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    code = run(["dissect", str(path), "--entries", "-", "--seed", "7"])
    out = capsys.readouterr()
    assert code == 0, out.err
    got = [json.loads(line) for line in out.out.splitlines()]
    assert got
    return got


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_dissect_reads_through_the_encapsulation(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames = traffic()
    plain = tmp_path / "plain.pcap"
    plain.write_bytes(make_pcap_bytes(frames))
    linktype, wrap = KINDS[kind]
    other = tmp_path / f"{kind}.pcap"
    other.write_bytes(make_pcap_bytes([(ts, wrap(f)) for ts, f in frames], linktype=linktype))
    want = entries(plain, capsys)
    assert {e["protocol"] for e in want} == {"http/1.1", "dns"} and len(want) == 4
    assert entries(other, capsys) == want
