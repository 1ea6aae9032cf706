"""kstap.filters.bpf: the compiled program is libpcap's (as tcpdump prints it), runs, and attaches."""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess

import pytest

from kstap.errors import ExitCode, UsageError
from kstap.filters import bpf
from kstap.filters.bpf import BPF_MAXINSNS, Program, compile_filter, final_expression

EXPRESSIONS = [
    "tcp port 80",
    "udp",
    "tcp and (port 80 or port 8080)",
    "host 10.1.2.3 and not port 22",
    "icmp",
    "ip6",
    "",
    "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0",
]


def _tcpdump(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tcpdump", *args], capture_output=True, text=True, timeout=30, check=False)


needs_tcpdump = pytest.mark.skipif(
    subprocess.run(["which", "tcpdump"], capture_output=True, check=False).returncode != 0,
    reason="tcpdump is not installed",
)


def _big_expression(terms: int) -> str:
    """An expression libpcap compiles quickly to ~3 instructions per term (hosts would take minutes)."""
    return " or ".join(f"ether[{i}] = {i % 256}" for i in range(terms))


@needs_tcpdump
@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_image_is_what_tcpdump_d_prints(expression: str) -> None:
    want = _tcpdump("-d", "-i", "lo", expression)
    assert want.returncode == 0, want.stderr
    assert compile_filter(expression).image() == want.stdout.splitlines()


@needs_tcpdump
@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_instructions_are_what_tcpdump_dd_prints(expression: str) -> None:
    want = _tcpdump("-dd", "-i", "lo", expression)
    assert want.returncode == 0, want.stderr
    insns = [tuple(int(v, 0) for v in m) for m in re.findall(
        r"\{ (0x[0-9a-f]+), (\d+), (\d+), (0x[0-9a-f]+) \}", want.stdout)]
    assert compile_filter(expression).insns == tuple(insns)


@needs_tcpdump
def test_vlan_code_is_libpcaps_offline_code(tmp_path, pcap) -> None:
    """For files libpcap tests the 802.1Q ethertype in the packet data (a live Linux handle
    would test the kernel's VLAN metadata instead; kstap compiles on a dead handle)."""
    capture = pcap(tmp_path / "empty.pcap", [])
    want = _tcpdump("-d", "-r", str(capture), "vlan and udp")
    assert want.returncode == 0, want.stderr
    assert compile_filter("vlan and udp").image() == want.stdout.splitlines()


@needs_tcpdump
@pytest.mark.parametrize("linktype", [1, 101, 113, 276])
@pytest.mark.parametrize("expression", ["udp port 53", "host 10.1.2.3 and not port 22", "ip6"])
def test_code_for_file_link_types(tmp_path, pcap, linktype: int, expression: str) -> None:
    """Files carry LINKTYPE_* values (raw IP is 101 in a file, DLT_RAW inside libpcap)."""
    capture = pcap(tmp_path / "empty.pcap", [], linktype=linktype)
    want = _tcpdump("-d", "-r", str(capture), expression)
    assert want.returncode == 0, want.stderr
    prog = compile_filter(expression, linktype=linktype)
    assert prog.image() == want.stdout.splitlines()
    assert prog.linktype == linktype


@needs_tcpdump
def test_snaplen_is_the_accept_value() -> None:
    want = _tcpdump("-d", "-s", "96", "-i", "lo", "udp")
    prog = compile_filter("udp", snaplen=96)
    assert prog.image() == want.stdout.splitlines()
    assert (0x06, 0, 0, 96) in prog.insns


@needs_tcpdump
@pytest.mark.parametrize(
    "expression",
    ["tcp port", "port 70000", "foo", "udp and", "net 10.0.0.1/8", "ether host zz", "tcp and (port 80"],
)
def test_bad_expression_is_a_usage_error_with_libpcaps_message(expression: str) -> None:
    tcpdump = _tcpdump("-d", "-i", "lo", expression)
    assert tcpdump.returncode != 0
    libpcap_message = tcpdump.stderr.strip().splitlines()[-1].removeprefix("tcpdump: ")
    with pytest.raises(UsageError) as info:
        compile_filter(expression)
    err = info.value
    assert err.code == ExitCode.USAGE
    assert err.message == f"invalid BPF filter {expression!r}: {libpcap_message}"
    assert err.hint and "pcap-filter(7)" in err.hint


def test_instruction_limit_rejects_longer_programs() -> None:
    with pytest.raises(UsageError) as info:
        compile_filter(_big_expression(1408))  # 4098 instructions
    assert "4098 BPF instructions" in info.value.message
    assert f"accepts {BPF_MAXINSNS}" in info.value.message
    assert info.value.hint


def test_instruction_limit_accepts_up_to_the_limit() -> None:
    prog = compile_filter(_big_expression(1407))
    assert len(prog.insns) == 4095 <= BPF_MAXINSNS


def test_instruction_limit_is_inclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A program of exactly the limit passes; one more instruction fails."""
    size = len(compile_filter("tcp port 80").insns)
    monkeypatch.setattr(bpf, "BPF_MAXINSNS", size)
    assert len(compile_filter("tcp port 80").insns) == size
    monkeypatch.setattr(bpf, "BPF_MAXINSNS", size - 1)
    with pytest.raises(UsageError, match=f"compiles to {size} BPF instructions"):
        compile_filter("tcp port 80")


def test_instruction_limit_is_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel refuses a classic filter above 4096 instructions with EINVAL (any socket will do)."""
    assert BPF_MAXINSNS == 4096
    monkeypatch.setattr(bpf, "BPF_MAXINSNS", 1 << 20)
    too_long = compile_filter(_big_expression(1408))
    assert len(too_long.insns) == 4098
    fprog, keep = too_long.sock_fprog()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError) as info:
        s.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER
    assert info.value.errno == 22
    del keep


def test_small_program_attaches_to_a_socket() -> None:
    fprog, keep = compile_filter("udp port 53").sock_fprog()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, 26, fprog)
    del keep


# -- running the program in user space ------------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("", [True, True, True, True, True, True]),
        ("udp", [True, False, False, True, True, False]),
        ("udp port 53", [True, False, False, False, True, False]),
        ("tcp port 80", [False, True, False, False, False, False]),
        ("host 10.1.2.3 and not port 22", [True, False, False, True, False, False]),
        ("host 10.1.2.3", [True, False, True, True, False, False]),
        ("icmp", [False, False, False, False, False, True]),
        ("ip6", [False, False, False, False, True, False]),
        ("udp[8:4] = 0x41424344", [True, False, False, False, False, False]),
    ],
)
def test_matches_crafted_frames(frames, expression: str, expected: list[bool]) -> None:
    packets = [
        frames.udp(src="10.0.0.1", dst="10.1.2.3", dport=53, payload=b"ABCD"),
        frames.tcp(src="10.0.0.1", dst="10.0.0.2", dport=80),
        frames.tcp(src="10.1.2.3", dst="10.0.0.2", dport=22),
        frames.udp(src="10.1.2.3", dst="10.0.0.9", dport=9999, payload=b"zz"),
        frames.udp6(dport=53),
        frames.icmp(dst="10.0.0.7"),
    ]
    prog = compile_filter(expression)
    assert [prog.matches(p, len(p)) for p in packets] == expected


def test_matches_sees_only_the_captured_bytes(frames) -> None:
    """A load past the captured length rejects the packet, as libpcap does."""
    pkt = frames.udp(dport=53, payload=b"ABCD")
    prog = compile_filter("udp[8:4] = 0x41424344")
    assert prog.matches(pkt, len(pkt))
    assert not prog.matches(pkt[:44], len(pkt))
    assert compile_filter("udp port 53").matches(pkt[:44], len(pkt))


def test_matches_uses_the_wire_length(frames) -> None:
    pkt = frames.udp(payload=b"x" * 10)
    assert compile_filter("greater 1000").matches(pkt, 1500)
    assert not compile_filter("greater 1000").matches(pkt, len(pkt))


# -- shaping for the socket -------------------------------------------------------------------------
def test_without_outgoing_prepends_the_pkttype_rejection() -> None:
    prog = compile_filter("tcp port 80")
    shaped = prog.without_outgoing()
    assert shaped.insns[3:] == prog.insns
    assert shaped.insns[:3] == (
        (0x30, 0, 0, 0xFFFFF004),  # ldb [SKF_AD_OFF + SKF_AD_PKTTYPE]
        (0x15, 0, 1, 4),  # jeq #PACKET_OUTGOING → next, else skip the ret
        (0x06, 0, 0, 0),  # ret #0
    )
    assert shaped.image()[:3] == [
        "(000) ldb      [type]",
        "(001) jeq      #0x4             jt 2\tjf 3",
        "(002) ret      #0",
    ]
    assert (shaped.expression, shaped.linktype, shaped.snaplen) == (prog.expression, prog.linktype, prog.snaplen)
    assert prog.without_outgoing() == shaped  # pure: the original is untouched
    assert len(prog.insns) == len(shaped.insns) - 3


def test_without_outgoing_keeps_jumps_inside_the_program() -> None:
    shaped = compile_filter("tcp and (port 80 or port 8080)").without_outgoing()
    n = len(shaped.insns)
    for i, (code, jt, jf, _k) in enumerate(shaped.insns):
        if code & 0x07 == 0x05 and code != 0x05:  # conditional jumps
            assert i + 1 + jt < n and i + 1 + jf < n


def _count_on_lo(program: Program, port: int, payload: bytes) -> int:
    """Send one UDP datagram over lo; count what an AF_PACKET socket with ``program`` sees."""
    idx = socket.if_nametoindex("lo")
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as raw, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        fprog, keep = program.sock_fprog()
        raw.setsockopt(socket.SOL_SOCKET, 26, fprog)
        raw.bind(("lo", 0x0003))
        del keep
        # drain anything that slipped in before the filter was attached
        raw.setblocking(False)
        try:
            while True:
                raw.recv(65535)
        except BlockingIOError:
            pass
        tx.sendto(payload, ("127.0.0.1", port))
        seen = 0
        while select.select([raw], [], [], 0.2)[0]:
            data, addr = raw.recvfrom(65535)
            assert addr[1] == 0x0800 and addr[0] == "lo" and socket.if_nametoindex(addr[0]) == idx
            if payload in data:
                seen += 1
        return seen


@pytest.mark.skipif(os.geteuid() != 0, reason="AF_PACKET on lo needs CAP_NET_RAW (run as root)")
def test_without_outgoing_drops_the_loopback_duplicate_in_the_kernel() -> None:
    port = 40000 + os.getpid() % 20000
    prog = compile_filter(f"udp dst port {port}")
    payload = os.urandom(16)
    assert _count_on_lo(prog, port, payload) == 2  # lo shows each packet leaving and arriving
    assert _count_on_lo(prog.without_outgoing(), port, b"again" + payload) == 1


def test_final_expression_strips_and_defaults() -> None:
    assert final_expression(None) == ""
    assert final_expression("  tcp port 80 \n") == "tcp port 80"


def test_a_cooked_socket_filter_reads_the_network_header_and_ancillary_fields() -> None:
    """libpcap compiles for LINUX_SLL2; the kernel runs a cooked socket's filter from the network
    header: loads past the 20-byte header move back, header fields become SKF_AD loads."""
    from kstap.filters.bpf import SKF_AD_IFINDEX, SKF_AD_OFF, SKF_AD_PKTTYPE, SKF_AD_PROTOCOL, for_cooked_socket

    prog = compile_filter("udp port 53 and inbound and ifindex 3", linktype=276)
    cooked = for_cooked_socket(prog)
    assert cooked.cooked and cooked.linktype == 276 and len(cooked.insns) == len(prog.insns)
    loads = [k for code, _, _, k in cooked.insns if code & 0x07 in (0, 1) and code & 0xE0 == 0x20]
    ad = {(SKF_AD_OFF + f) & 0xFFFFFFFF for f in (SKF_AD_PROTOCOL, SKF_AD_IFINDEX, SKF_AD_PKTTYPE)}
    assert ad <= set(loads)
    assert all(k < 0x1000 or k in ad for k in loads)
    assert for_cooked_socket(cooked) is cooked  # once only
    assert for_cooked_socket(compile_filter("udp")).linktype == 1  # other link types pass through


def test_a_filter_on_the_cooked_address_cannot_run_in_the_kernel() -> None:
    from kstap.filters.bpf import for_cooked_socket

    with pytest.raises(UsageError, match="cooked header"):
        for_cooked_socket(compile_filter("ether[12] = 2", linktype=276))
