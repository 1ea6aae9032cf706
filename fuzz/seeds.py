"""Valid inputs for every fuzz target, in each target's byte encoding (the starting corpus).

Coverage-guided fuzzing mutates these; the hypothesis tests mutate them too. Built from the same
encoders the targets decode (:func:`encode_ops`, :func:`encode_frames`), so a seed exercises the
happy path of its parser before the fuzzer starts bending it.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Sequence

import dpkt

from kstap.formats import pcapng
from kstap.model import Interface, PacketRecord

T0 = 1_700_000_000 * 10**9
Op = tuple[str, int, bytes | int]


# -- encoders (inverse of the targets' decoders) ------------------------------------------------------------

def encode_ops(ops: Iterable[Op]) -> bytes:
    """The bytes :func:`targets.stream_ops` cuts back into ``ops`` (feeds longer than 255 use 64-byte units,
    padded pieces are split)."""
    out = bytearray()
    for kind, direction, arg in ops:
        if kind == "gap":
            assert isinstance(arg, int)
            out += bytes([6 | direction, max(0, min(255, arg - 1))])
            continue
        assert isinstance(arg, bytes)
        data = arg
        while True:
            if len(data) <= 255:
                out += bytes([direction, len(data)]) + data
                break
            n = min(255, len(data) // 64)
            out += bytes([8 | direction, n]) + data[: n * 64]
            data = data[n * 64 :]
            if not data:
                break
    return bytes(out)


def encode_frames(frames: Iterable[tuple[int, bytes]]) -> bytes:
    """Inverse of :func:`targets.frames_of`: (interface 0..3, frame up to 16383 bytes) pieces."""
    out = bytearray()
    for ifid, frame in frames:
        n = min(len(frame), (63 << 8) | 255)
        out += bytes([((n >> 8) << 2) | (ifid & 3), n & 0xFF]) + frame[:n]
    return bytes(out)


# -- frames ----------------------------------------------------------------------------------------------

MAC_A, MAC_B = b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02"


def eth(ethertype: int, payload: bytes, vlans: Sequence[int] = ()) -> bytes:
    tags = b"".join(struct.pack("!HH", tpid, 100) for tpid in vlans)
    if vlans:
        return MAC_B + MAC_A + tags[:2] + tags[2:] + struct.pack("!H", ethertype) + payload
    return MAC_B + MAC_A + struct.pack("!H", ethertype) + payload


def ip4(src: str, dst: str, proto: int, l4: bytes, frag: int = 0) -> bytes:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=64, data=l4)
    ip.len = len(ip)
    raw = bytearray(bytes(ip))
    raw[6:8] = struct.pack("!H", frag)  # flags + fragment offset (the checksum is not checked)
    return bytes(raw)


def ip6(src: str, dst: str, nxt: int, l4: bytes) -> bytes:
    ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                      nxt=nxt, hlim=64, data=l4)
    ip.plen = len(l4)
    return bytes(ip)


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = len(u)
    return bytes(u)


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    return bytes(dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=65535, data=payload))


def sample_frames() -> list[bytes]:
    """One of each kind the flow key distinguishes."""
    return [
        eth(0x0800, ip4("10.0.0.1", "10.0.0.2", 17, udp(40000, 53, b"q" * 20))),
        eth(0x0800, ip4("10.0.0.2", "10.0.0.1", 6, tcp(80, 40000, 1, 2, 0x18, b"HTTP/1.1 200 OK\r\n"))),
        eth(0x0800, ip4("10.0.0.1", "10.0.0.2", 1, b"\x08\0\0\0\0\1\0\1ping")),
        eth(0x0800, ip4("10.0.0.1", "10.0.0.2", 17, udp(1, 2, b"x" * 40), frag=0x2000)),
        eth(0x0800, ip4("10.0.0.1", "10.0.0.2", 132, b"\x13\x88\x13\x89" + b"\0" * 12)),
        eth(0x86DD, ip6("fd00::1", "fd00::2", 17, udp(40000, 53, b"v6"))),
        eth(0x86DD, ip6("fd00::2", "fd00::1", 6, tcp(443, 5555, 9, 9, 0x10))),
        eth(0x0800, ip4("10.1.1.1", "10.1.1.2", 6, tcp(1, 2, 3, 4, 2)), vlans=(0x8100,)),
        eth(0x0800, ip4("10.1.1.1", "10.1.1.2", 17, udp(7, 8, b"")), vlans=(0x88A8, 0x8100)),
        eth(0x0806, b"\0\1\x08\0\6\4\0\1" + MAC_A + b"\x0a\0\0\1" + b"\0" * 6 + b"\x0a\0\0\2"),
    ]


def flowkey_seeds() -> list[bytes]:
    out = [b"\0" + f for f in sample_frames()]
    out += [b"\1" + f[14:] for f in sample_frames()[:3]]  # raw IP
    return out


# -- capture files ---------------------------------------------------------------------------------------

def _records(frames: Sequence[bytes], ifaces: int = 1) -> list[PacketRecord]:
    return [(T0 + i * 1_234_567, len(f), len(f) + (i % 2) * 10, f, i % ifaces, i % 3) for i, f in enumerate(frames)]


def pcapng_file(frames: Sequence[bytes], *, comments: bool = True, ifaces: int = 2) -> bytes:
    recs = _records(frames, ifaces)
    notes = {0: "kstap: flow 0001 mode=auto rate=0.5 seed=abcd"} if comments else None
    parts = [pcapng.section_header(comment="kstap run: mode=auto"),
             *(pcapng.interface_description(Interface(f"if{i}", 1, 262144, "udp or tcp", "d")) for i in range(ifaces)),
             *pcapng.enhanced_packets(recs, with_queue=True, comments=notes),
             *(pcapng.interface_statistics(i, pcapng.InterfaceCounters(T0, T0 + 10**9, 100, 3, 50))
               for i in range(ifaces))]
    return b"".join(parts)


def pcap_file(frames: Sequence[bytes], *, nano: bool = True, big_endian: bool = False) -> bytes:
    e = ">" if big_endian else "<"
    out = [struct.pack(e + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, f in enumerate(frames):
        out.append(struct.pack(e + "IIII", 1_700_000_000 + i, i * 1000, len(f), len(f)) + f)
    return b"".join(out)


def savefile_seeds() -> list[bytes]:
    frames = sample_frames()
    return [pcapng_file(frames), pcapng_file(frames[:2], comments=False, ifaces=1), pcap_file(frames),
            pcap_file(frames[:3], nano=False, big_endian=True)]


# -- HTTP/1 ----------------------------------------------------------------------------------------------

def http1_conversation() -> list[Op]:
    return [
        ("feed", 0, b"GET /a?x=1 HTTP/1.1\r\nHost: example\r\nUser-Agent: t\r\n\r\n"),
        ("feed", 1, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        ("feed", 0, b"POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("feed", 1, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"),
        ("feed", 0, b"HEAD /c HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("feed", 1, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
        ("feed", 0, b"GET /d HTTP/1.0\r\n\r\n"),
        ("gap", 1, 10),
        ("feed", 1, b"HTTP/1.0 404 Not Found\r\n\r\nbody until close"),
    ]


def http1_upgrade() -> list[Op]:
    return [
        ("feed", 0, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                    b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"),
        ("feed", 1, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"),
        ("feed", 0, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
        ("feed", 1, b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
    ]


def http1_seeds() -> list[bytes]:
    return [encode_ops(http1_conversation()), encode_ops(http1_upgrade())]


# -- HTTP/2 ----------------------------------------------------------------------------------------------

def h2_conversation(grpc: bool = False) -> list[Op]:
    """A real client/server exchange made by the ``h2`` library (a dev dependency)."""
    import h2.config
    import h2.connection

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    ops: list[Op] = []

    def pump() -> None:
        for conn, direction, peer in ((client, 0, server), (server, 1, client)):
            data = conn.data_to_send()
            if data:
                ops.append(("feed", direction, data))
                peer.receive_data(data)

    client.initiate_connection()
    server.initiate_connection()
    pump()
    ctype = "application/grpc" if grpc else "text/plain"
    for sid in (1, 3):
        client.send_headers(sid, [(":method", "POST"), (":path", "/pkg.Svc/Call" if grpc else f"/s{sid}"),
                                  (":scheme", "http"), (":authority", "example"), ("content-type", ctype)])
        body = b"\0\0\0\0\5hello" if grpc else b"hello"
        client.send_data(sid, body, end_stream=True)
        pump()
        server.send_headers(sid, [(":status", "200"), ("content-type", ctype)])
        server.send_data(sid, body)
        if grpc:
            server.send_headers(sid, [("grpc-status", "0"), ("grpc-message", "ok")], end_stream=True)
        else:
            server.end_stream(sid)
        pump()
    client.send_headers(5, [(":method", "GET"), (":path", "/r"), (":scheme", "http"), (":authority", "e")],
                        end_stream=True)
    client.reset_stream(5)
    client.close_connection()
    pump()
    return ops


def http2_seeds() -> list[bytes]:
    return [b"\0" + encode_ops(h2_conversation()), b"\0" + encode_ops(h2_conversation(grpc=True)),
            b"\1" + encode_ops([("feed", 0, b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")])]


# -- DNS -------------------------------------------------------------------------------------------------

def dns_pair(name: str = "www.demo.kstap.test", qid: int = 0x1234) -> tuple[bytes, bytes]:
    from kstap.demo.traffic import demo_zone, dns_answer, dns_query

    q = dns_query(name, qid)
    a = dns_answer(q, demo_zone("10.0.0.2")) or b""
    return q, a


def dns_seeds() -> list[bytes]:
    q, a = dns_pair()
    q2, a2 = dns_pair("nope.demo.kstap.test", 7)
    udp_msgs = bytearray(b"\0")
    for from_client, m in ((True, q), (False, a), (True, q2), (False, a2)):
        udp_msgs += bytes([int(from_client), min(255, len(m))]) + m[:255]
    stream = [("feed", 0, struct.pack("!H", len(q)) + q), ("feed", 1, struct.pack("!H", len(a)) + a),
              ("feed", 0, struct.pack("!H", len(q2)) + q2)]
    return [bytes(udp_msgs), b"\x80" + encode_ops(stream)]  # type: ignore[arg-type]


# -- the dissection stage --------------------------------------------------------------------------------

def tcp_session(payloads: Sequence[tuple[int, bytes]], *, sport: int = 40000, dport: int = 80) -> list[bytes]:
    """Ethernet frames of a whole TCP session: handshake, the payloads (0 client, 1 server), FINs."""
    c, s = "10.0.0.1", "10.0.0.2"
    cseq, sseq = 1000, 5000
    frames = [eth(0x0800, ip4(c, s, 6, tcp(sport, dport, cseq, 0, 0x02))),
              eth(0x0800, ip4(s, c, 6, tcp(dport, sport, sseq, cseq + 1, 0x12))),
              eth(0x0800, ip4(c, s, 6, tcp(sport, dport, cseq + 1, sseq + 1, 0x10)))]
    cseq += 1
    sseq += 1
    for side, data in payloads:
        if side == 0:
            frames.append(eth(0x0800, ip4(c, s, 6, tcp(sport, dport, cseq, sseq, 0x18, data))))
            cseq += len(data)
        else:
            frames.append(eth(0x0800, ip4(s, c, 6, tcp(dport, sport, sseq, cseq, 0x18, data))))
            sseq += len(data)
    frames.append(eth(0x0800, ip4(c, s, 6, tcp(sport, dport, cseq, sseq, 0x11))))
    frames.append(eth(0x0800, ip4(s, c, 6, tcp(dport, sport, sseq, cseq + 1, 0x11))))
    frames.append(eth(0x0800, ip4(c, s, 6, tcp(sport, dport, cseq + 1, sseq + 1, 0x10))))
    return frames


def stage_seeds() -> list[bytes]:
    http = [(op[1], op[2]) for op in http1_conversation()[:4] if op[0] == "feed"]
    h2 = [(op[1], op[2]) for op in h2_conversation() if op[0] == "feed"]
    q, a = dns_pair()
    dns_frames = [eth(0x0800, ip4("10.0.0.1", "10.0.0.3", 17, udp(5353, 53, q))),
                  eth(0x0800, ip4("10.0.0.3", "10.0.0.1", 17, udp(53, 5353, a)))]
    return [b"\0" + encode_frames((0, f) for f in tcp_session(http)),  # type: ignore[arg-type]
            b"\0" + encode_frames((0, f) for f in tcp_session(h2, dport=8080)),  # type: ignore[arg-type]
            b"\x04" + encode_frames([(0, dns_frames[0]), (1, dns_frames[1][14:])])]


# -- settings --------------------------------------------------------------------------------------------

def settings_seeds() -> list[bytes]:
    config = ("bpf_filter: tcp port 80\ninterfaces: [veth0]\nsampling:\n  mode: auto\n  rate: 25%\n"
              "  memory_budget: 512Mi\n  seed: 0x1234\noutput:\n  path: out.pcapng\n  rotate_mb: 100\n"
              "  ring_files: 5\n")
    return [
        config.encode() + b"\0sampling.mode=percentage\nsampling.rate=0.1\0OUTPUT_PATH=x.pcapng",
        b"interfaces: veth0\nprofile: prod\n\0workers=2\nsnaplen=96\n\0",
        b"\0interfaces=veth0,veth1\nsampling.min_rate=5%\nduration=10\nentries=-\n\0SAMPLING__MODE=auto",
        b"read: in.pcapng\nrealtime: true\nsampling: {mode: full}\n",
    ]


# -- remote capture: the worker API and the worker stream ------------------------------------------------

def worker_api_seeds() -> list[bytes]:
    """Requests of one connection, in the target's encoding (a state/mode byte, then the bytes sent)."""
    from remote_targets import RUN, TOKEN

    auth = f"Authorization: Bearer {TOKEN}\r\n"
    xauth = f"X-Kstap-Authorization: Bearer {TOKEN}\r\n"

    def post(body: bytes, headers: str = auth) -> bytes:
        return (f"POST /v1/control HTTP/1.1\r\nHost: w\r\n{headers}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    stats = f"GET /v1/stats HTTP/1.1\r\nHost: w\r\n{auth}\r\n".encode()
    return [
        b"\0" + b"GET /healthz HTTP/1.1\r\nHost: w\r\n\r\n" + stats,
        b"\1" + f"GET /v1/stream?after=2&run={RUN} HTTP/1.1\r\nHost: w\r\n{xauth}\r\n".encode(),
        b"\0" + f"GET /v1/stream HTTP/1.1\r\n{auth}\r\n".encode(),
        b"\4" + post(b'{"rate": 0.25}') + post(b'{"filter": "tcp port 80"}', xauth) + stats,
        b"\0" + post(b'{"rate": 0.5, "filter": "udp"}'),
        b"\x08" + post(b'{"filter": "not a filter ("}'),
        b"\0" + f"GET /v1/stats HTTP/1.1\r\nAuthorization: Bearer {TOKEN[:-1]}\r\n\r\n".encode()
        + b"DELETE /v1/control HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"\3" + f"GET /v1/stream?after=1&after=2 HTTP/1.1\r\n{auth}Expect: 100-continue\r\n\r\n".encode(),
    ]


def worker_stream_bytes() -> bytes:
    """A whole worker stream: preamble, HELLO, BATCH with a comment, IFSTATS, EVENTs, ENTRIES, GAP, END."""
    from kstap.model import SourceStats
    from kstap.remote import protocol

    hello = protocol.Hello("node-a", "run1", (Interface("veth0"), Interface("eth1", 113, 96, "tcp")),
                           comment="kstap: run mode=percentage rate=0.5 seed=ab12", mode="percentage", rate=0.5,
                           seed_id="ab12", started_ns=T0)
    frames = sample_frames()[:3]
    recs: list[PacketRecord] = [(T0 + i, len(f), len(f) + 4, f, i % 2, 0) for i, f in enumerate(frames)]
    return b"".join([
        protocol.preamble(), protocol.encode_hello(0, hello), protocol.encode_batch(1, T0, recs, {1: "flow 0001"}),
        protocol.encode_ifstats(2, [SourceStats(10, 1, 3), SourceStats(0, 0, 0)]),
        protocol.encode_event(3, "alert", {"level": "warn", "kind": "drops", "message": "kernel dropped 1"}),
        protocol.encode_event(4, "rate_change", {"old": 0.5, "new": 0.25, "reason": "cpu"}),
        protocol.encode_event(5, "stats", {"captured": 3, "rate": 0.25, "elapsed": 1.5}),
        protocol.encode_entries(6, ['{"method":"GET","url":"/a"}', '{"status":200}']),
        protocol.encode_batch(6, T0 + 10, []), protocol.encode_gap(9, 2, 7),
        protocol.encode_event(10, "warning", {"message": "w"}),
        protocol.encode_end(11, "duration", {"captured": 3}),
    ])


def worker_stream_seeds() -> list[bytes]:
    stream = worker_stream_bytes()
    return [b"\0\0" + stream, b"\x07\0" + stream, b"\0\1" + stream[8:], b"\x01\0" + stream[:120]]


SEEDS = {"flowkey": flowkey_seeds, "savefile": savefile_seeds, "http1": http1_seeds, "http2": http2_seeds,
         "dns": dns_seeds, "stage": stage_seeds, "settings": settings_seeds,
         "worker_api": worker_api_seeds, "worker_stream": worker_stream_seeds}
