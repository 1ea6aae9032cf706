"""Shared helpers: run the CLI in-process or as ``python -m kstap``, craft frames, ask tshark.

Helpers are session-scoped fixtures (plain objects, no state), so hypothesis tests can use them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
import pytest

from kstap.cli.main import run

ROOT = Path(__file__).resolve().parent.parent
"""The project directory (where ``python -m kstap`` finds the package)."""

collect_ignore = [] if os.environ.get("KSTAP_E2E") else ["cluster"]
"""tests/cluster/ needs the real cluster of `make cluster`: only `make e2e` (KSTAP_E2E=1) collects it, so
`make test` stays fast and cluster-free."""


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C for the tests' children, as from a terminal. A shell without job control starts a
    background command (``make test &`` in a script) ignoring SIGINT, and every child inherits
    that: Python then installs no Ctrl-C handler, so ``kstap filter`` and the tests' Python peers
    ran on after the SIGINT the tests send them (a 20 s timeout, and a 63 s fixture that waited
    for each peer before killing it). A caught signal is reset to the default at exec."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


ROOT_WARNING = 'Running as user "root"'
"""tshark/dumpcap print this on stderr for every run as root; it is not an error."""


# -- running the CLI -----------------------------------------------------------------------------
@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.pop("KSTAP_DEBUG", None)
    env["COLUMNS"] = "100"
    return env


def run_kstap(
    *args: str,
    prefix: Sequence[str] = (),
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 30,
    text: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``[*prefix] python -m kstap ARGS`` in a child process (prefix: e.g. a setpriv command)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "kstap", *args],
        cwd=cwd or ROOT, env=_env(), capture_output=True, text=text, timeout=timeout, check=False,
    )


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``kstap ARGS`` in this process via :func:`kstap.cli.main.run`; returns code, stdout, stderr."""

    def _run(*argv: str) -> CliResult:
        capsys.readouterr()
        code = run(list(argv))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return _run


@pytest.fixture(scope="session")
def kstap_proc() -> Callable[..., subprocess.CompletedProcess[str]]:
    """:func:`run_kstap` as a fixture."""
    return run_kstap


def assert_two_line_error(err: str, message_start: str) -> None:
    """stderr is exactly ``kstap: error: …`` and ``hint: …``, no traceback."""
    lines = err.splitlines()
    assert "Traceback" not in err
    assert len(lines) == 2, err
    assert lines[0].startswith(f"kstap: error: {message_start}"), err
    assert lines[1].startswith("hint: ") and len(lines[1]) > len("hint: "), err


@pytest.fixture(scope="session")
def two_line_error() -> Callable[[str, str], None]:
    return assert_two_line_error


# -- frames and capture files --------------------------------------------------------------------
class Frames:
    """Ethernet frames built with dpkt (addresses as text)."""

    SRC_MAC = b"\x02\x00\x00\x00\x00\x01"
    DST_MAC = b"\x02\x00\x00\x00\x00\x02"

    @staticmethod
    def _eth(ethertype: int, payload: bytes) -> bytes:
        return bytes(dpkt.ethernet.Ethernet(src=Frames.SRC_MAC, dst=Frames.DST_MAC, type=ethertype,
                                            data=payload))

    @staticmethod
    def _ip4(src: str, dst: str, proto: int, l4: dpkt.Packet) -> bytes:
        ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=64, data=l4)
        ip.len = len(ip)
        return Frames._eth(dpkt.ethernet.ETH_TYPE_IP, bytes(ip))

    @staticmethod
    def udp(src: str = "10.0.0.1", dst: str = "10.0.0.2", sport: int = 40000, dport: int = 40001,
            payload: bytes = b"") -> bytes:
        udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
        udp.ulen = len(udp)
        return Frames._ip4(src, dst, dpkt.ip.IP_PROTO_UDP, udp)

    @staticmethod
    def tcp(src: str = "10.0.0.1", dst: str = "10.0.0.2", sport: int = 40000, dport: int = 80,
            payload: bytes = b"", flags: int = dpkt.tcp.TH_ACK) -> bytes:
        tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=1, ack=1, flags=flags, win=65535, data=payload)
        return Frames._ip4(src, dst, dpkt.ip.IP_PROTO_TCP, tcp)

    @staticmethod
    def icmp(src: str = "10.0.0.1", dst: str = "10.0.0.2") -> bytes:
        icmp = dpkt.icmp.ICMP(type=8, code=0, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"ping"))
        return Frames._ip4(src, dst, dpkt.ip.IP_PROTO_ICMP, icmp)

    @staticmethod
    def udp6(src: str = "fd00::1", dst: str = "fd00::2", sport: int = 40000, dport: int = 53,
             payload: bytes = b"") -> bytes:
        udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
        udp.ulen = len(udp)
        ip6 = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                           nxt=dpkt.ip.IP_PROTO_UDP, hlim=64, data=udp)
        ip6.plen = len(udp)
        return Frames._eth(dpkt.ethernet.ETH_TYPE_IP6, bytes(ip6))

    @staticmethod
    def arp() -> bytes:
        arp = dpkt.arp.ARP(sha=Frames.SRC_MAC, spa=socket.inet_aton("10.0.0.1"), tha=b"\0" * 6,
                           tpa=socket.inet_aton("10.0.0.2"))
        return Frames._eth(dpkt.ethernet.ETH_TYPE_ARP, bytes(arp))

    @staticmethod
    def mixed(n: int = 60) -> list[bytes]:
        """A varied set: TCP 80/8080/22, UDP 53 (v4 and v6), ICMP, ARP, various hosts."""
        kinds: list[Callable[[int], bytes]] = [
            lambda i: Frames.tcp(dport=80, payload=b"GET / HTTP/1.1\r\n\r\n" * (i % 3)),
            lambda i: Frames.tcp(src="10.1.2.3", dport=8080, payload=b"x" * i),
            lambda i: Frames.tcp(src="10.1.2.3", dport=22, payload=b"ssh"),
            lambda i: Frames.udp(dst="10.1.2.3", dport=53, payload=b"q" * (i + 1)),
            lambda i: Frames.udp6(payload=b"v6" * i),
            lambda i: Frames.icmp(dst="10.1.2.3"),
            lambda i: Frames.arp(),
            lambda i: Frames.udp(sport=5000 + i, dport=9999, payload=bytes(range(256)) * (1 + i % 4)),
        ]
        return [kinds[i % len(kinds)](i) for i in range(n)]


@pytest.fixture(scope="session")
def frames() -> type[Frames]:
    return Frames


def make_pcap_bytes(
    packets: Iterable[tuple[Any, ...]],
    *,
    nano: bool = True,
    big_endian: bool = False,
    snaplen: int = 262144,
    linktype: int = 1,
) -> bytes:
    """A classic pcap file, written by hand (either byte order, µs or ns).

    Items may carry a third element, the original length (for truncated records).
    """
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for item in packets:
        ts, data = item[0], item[1]
        origlen = item[2] if len(item) > 2 else len(data)
        sec, frac = divmod(ts, 1_000_000_000)
        if not nano:
            frac //= 1000
        out.append(struct.pack(e + "IIII", sec, frac, len(data), origlen) + data)
    return b"".join(out)


def write_pcap(path: Path, packets: Iterable[tuple[Any, ...]], **kw: Any) -> Path:
    path.write_bytes(make_pcap_bytes(packets, **kw))
    return path


@pytest.fixture(scope="session")
def pcap_bytes() -> Callable[..., bytes]:
    """``pcap_bytes([(ts_ns, frame[, origlen]), ...], nano=True, big_endian=False, ...)``."""
    return make_pcap_bytes


@pytest.fixture(scope="session")
def pcap() -> Callable[..., Path]:
    """``pcap(path, [(ts_ns, frame), ...], nano=True, big_endian=False)`` writes a classic pcap."""
    return write_pcap


# -- the Wireshark tools --------------------------------------------------------------------------
def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install tshark tcpdump)")
    return path


def errors_of(stderr: str) -> list[str]:
    """stderr lines that are not the as-root banner."""
    return [line for line in stderr.splitlines() if line.strip() and ROOT_WARNING not in line]


class Wireshark:
    """tshark, capinfos, editcap and tcpdump, run on files kstap wrote."""

    @staticmethod
    def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_need(tool), *args], capture_output=True, text=True, timeout=30, check=False)

    @classmethod
    def read_ok(cls, path: Path | str) -> list[str]:
        """``tshark -r``: asserts it reads the whole file with no error; returns the summary lines."""
        r = cls.run("tshark", "-n", "-r", str(path))
        assert r.returncode == 0 and not errors_of(r.stderr), f"tshark -r {path}: {r.stderr}"
        return r.stdout.splitlines()

    @classmethod
    def fields(cls, path: Path | str, *fields: str, display_filter: str = "") -> list[list[str]]:
        args = ["-n", "-r", str(path), "-T", "fields", "-E", "separator=\t"]
        if display_filter:
            args += ["-Y", display_filter]
        for f in fields:
            args += ["-e", f]
        r = cls.run("tshark", *args)
        assert r.returncode == 0 and not errors_of(r.stderr), f"tshark: {r.stderr}"
        return [line.split("\t") for line in r.stdout.splitlines()]

    @classmethod
    def count(cls, path: Path | str, display_filter: str = "") -> int:
        return len(cls.fields(path, "frame.number", display_filter=display_filter))

    @classmethod
    def capinfos(cls, path: Path | str) -> str:
        r = cls.run("capinfos", "-M", str(path))
        assert r.returncode == 0 and not errors_of(r.stderr), f"capinfos: {r.stderr}"
        return r.stdout

    @classmethod
    def packet_counts(cls, paths: Iterable[Path | str]) -> list[int]:
        """Packets in each file, one ``capinfos`` run; asserts every file reads to its end cleanly."""
        names = [str(p) for p in paths]
        r = cls.run("capinfos", "-c", "-M", *names)
        assert r.returncode == 0 and not errors_of(r.stderr), f"capinfos: {r.stderr}"
        counts = [int(line.split(":", 1)[1]) for line in r.stdout.splitlines()
                  if line.startswith("Number of packets:")]
        assert len(counts) == len(names)
        return counts

    @classmethod
    def tcpdump_count(cls, path: Path | str, expression: str) -> int:
        r = cls.run("tcpdump", "-n", "-r", str(path), expression)
        assert r.returncode == 0, r.stderr
        return len(r.stdout.splitlines())

    @classmethod
    def editcap(cls, src: Path | str, dst: Path | str, fmt: str) -> Path:
        r = cls.run("editcap", "-F", fmt, str(src), str(dst))
        assert r.returncode == 0, r.stderr
        return Path(dst)


@pytest.fixture(scope="session")
def wireshark() -> type[Wireshark]:
    return Wireshark


# -- an independent pcapng block walker (not kstap's reader) ---------------------------------------
def pcapng_blocks(data: bytes) -> list[tuple[int, bytes]]:
    """(block type, body) of every block of a little-endian pcapng file; asserts the framing."""
    blocks = []
    pos = 0
    while pos < len(data):
        btype, length = struct.unpack_from("<II", data, pos)
        assert length >= 12 and length % 4 == 0, f"bad block length {length} at {pos}"
        (trailer,) = struct.unpack_from("<I", data, pos + length - 4)
        assert trailer == length, f"trailer {trailer} != {length} at {pos}"
        blocks.append((btype, data[pos + 8 : pos + length - 4]))
        pos += length
    assert pos == len(data)
    return blocks


def pcapng_options(raw: bytes) -> dict[int, list[bytes]]:
    opts: dict[int, list[bytes]] = {}
    pos = 0
    while pos + 4 <= len(raw):
        code, length = struct.unpack_from("<HH", raw, pos)
        if code == 0:
            break
        opts.setdefault(code, []).append(raw[pos + 4 : pos + 4 + length])
        pos += 4 + length + (-length % 4)
    return opts


@pytest.fixture(scope="session")
def blocks() -> Callable[[bytes], list[tuple[int, bytes]]]:
    return pcapng_blocks


@pytest.fixture(scope="session")
def block_options() -> Callable[[bytes], dict[int, list[bytes]]]:
    return pcapng_options
