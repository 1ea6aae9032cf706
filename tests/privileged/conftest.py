"""Fixtures for the privileged capture tests: a Lab per test, kstap/tcpdump runners, traffic.

Everything runs inside the two network namespaces of a :class:`kstap.demo.lab.Lab` (or on their
own ``lo``): captures are opened with ``--netns`` or ``ip netns exec``, traffic goes only between
the lab's veth addresses, and every process started here is stopped by its PID when the test ends,
pass or fail.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest

from kstap.demo.lab import Lab
from kstap.formats.savefile import CaptureFormatError, CaptureReader, PacketInfo, Statistics
from kstap.model import Interface, PacketRecord

UDP_PORT = 5001
UDP_PORT_2 = 5002
TCP_PORT = 5001
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0

# -- the programs run inside the namespaces -----------------------------------------------------

SERVER_SRC = r'''
import json, socket, sys, threading, time
cfg = json.loads(sys.argv[1])
deadline = time.monotonic() + cfg["lifetime"]
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((cfg["ip"], port))
    s.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            data, peer = s.recvfrom(65535)
        except socket.timeout:
            continue
        if cfg["echo_udp"]:
            s.sendto(data, peer)
def conn(c):
    c.settimeout(5)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            data = c.recv(65536)
            if not data:
                break
            c.sendall(data)
    except OSError:
        pass
    finally:
        c.close()
def tcp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((cfg["ip"], port))
    s.listen(64)
    s.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            c, _ = s.accept()
        except socket.timeout:
            continue
        threading.Thread(target=conn, args=(c,), daemon=True).start()
for p in cfg["udp_ports"]:
    threading.Thread(target=udp, args=(p,), daemon=True).start()
threading.Thread(target=tcp, args=(cfg["tcp_port"],), daemon=True).start()
time.sleep(0.2)
print("ready", flush=True)
while time.monotonic() < deadline:
    time.sleep(0.2)
'''

SENDER_SRC = r'''
import json, socket, sys, time
cfg = json.loads(sys.argv[1])
dst = cfg["dst"]
out = {"udp_sent": 0, "udp_echoed": 0, "tcp_conns": 0, "tcp_msgs": 0}
def payload(n, tag):
    body = (tag.encode() * (n // max(1, len(tag)) + 1))[:n]
    return body
# UDP: each flow is its own socket (its own source port); the server may echo every datagram.
socks = []
for f in range(cfg["udp_flows"]):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((cfg["src"], 0))
    s.settimeout(2.0)
    socks.append(s)
for f, s in enumerate(socks):
    for port in cfg["udp_ports"]:
        for i, n in enumerate(cfg["udp_sizes"]):
            s.sendto(payload(n, f"{cfg['tag']}-u{f}-{port}-{i}|"), (dst, port))
            out["udp_sent"] += 1
            if cfg["echo_udp"]:
                try:
                    s.recvfrom(65535)
                    out["udp_echoed"] += 1
                except socket.timeout:
                    pass
for s in socks:
    s.close()
# TCP: ping-pong with TCP_NODELAY so every message is one segment (no GSO super-packets).
for c in range(cfg["tcp_conns"]):
    t = socket.create_connection((dst, cfg["tcp_port"]), timeout=5, source_address=(cfg["src"], 0))
    t.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i, n in enumerate(cfg["tcp_sizes"]):
        msg = payload(n, f"{cfg['tag']}-t{c}-{i}|")
        t.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = t.recv(65536)
            if not chunk:
                break
            got += chunk
        out["tcp_msgs"] += 1
    t.close()
    out["tcp_conns"] += 1
print(json.dumps(out), flush=True)
'''

FLOOD_SRC = r'''
import socket, sys, time
dst, port = sys.argv[1], int(sys.argv[2])
seconds, limit, rate = float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + seconds
gap = 1.0 / rate
sent = 0
print("flooding", flush=True)
while sent < limit and time.monotonic() < end:
    s.sendto(b"flood-%08d|" % sent + b"f" * (sent % 900), (dst, port))
    sent += 1
    time.sleep(gap)
print(sent, flush=True)
'''


# -- processes -------------------------------------------------------------------------------------

@dataclass
class Proc:
    """A started process whose stderr is collected by a thread (so it can never fill the pipe)."""

    popen: subprocess.Popen[bytes]
    name: str
    ready_pattern: str
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start_reader(self) -> None:
        def pump() -> None:
            assert self.popen.stderr is not None
            for raw in iter(self.popen.stderr.readline, b""):
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append(line)
                if self.ready_pattern in line:
                    self.ready.set()
            self.ready.set()  # EOF: the process ended (wait_ready notices it did not start)

        self._thread = threading.Thread(target=pump, name=f"stderr-{self.name}", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        if not self.ready.wait(timeout):
            raise AssertionError(f"{self.name} not ready after {timeout}s; stderr so far:\n{self.stderr}")
        if not any(self.ready_pattern in line for line in self.lines):
            self.popen.wait(timeout=5)
            raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before it was ready:\n"
                                 f"{self.stderr}")

    def wait_lines(self, pattern: str, count: int, timeout: float = READY_TIMEOUT) -> int:
        """Wait until ``count`` stderr lines contain ``pattern``; returns how many do."""
        deadline = time.monotonic() + timeout
        while True:
            n = sum(pattern in line for line in list(self.lines))
            if n >= count or time.monotonic() > deadline or self.popen.poll() is not None:
                return n
            time.sleep(0.02)

    def send_signal(self, signum: int, *, group: bool = False) -> None:
        """Signal the process, or (``group``) its whole process group, as a terminal's Ctrl-C does."""
        if self.popen.poll() is None:
            if group:
                assert os.getpgid(self.popen.pid) == self.popen.pid  # its own group, never ours
                os.killpg(self.popen.pid, signum)
            else:
                os.kill(self.popen.pid, signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout}s; stderr:\n{self.stderr}") from None
        if self._thread is not None:
            self._thread.join(timeout=5)
        return rc

    def stop(self, signum: int = signal.SIGINT, timeout: float = STOP_TIMEOUT) -> int:
        self.send_signal(signum)
        return self.wait(timeout)

    def kill(self) -> None:
        """Cleanup: TERM, then KILL, by PID only."""
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)


class Harness:
    """One test's lab plus the processes it started; ``close`` stops them all by PID."""

    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab = lab
        self.tmp = tmp
        self.procs: list[Proc] = []
        self._server: subprocess.Popen[bytes] | None = None

    # capture processes
    def kstap(self, out: str | Path | None, *args: str, iface: str | None = None,
              ns: str | None = None, stdout: object = subprocess.DEVNULL, wait: bool = True) -> Proc:
        """``python -m kstap tap --netns NS -i IF [-w OUT] ARGS`` (the server side by default)."""
        argv = [sys.executable, "-m", "kstap", "tap", "--netns", ns or self.lab.server,
                "-i", iface or self.lab.server_if]
        if out is not None:
            argv += ["-w", str(out)]
        argv += list(args)
        p = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             cwd=self.tmp, start_new_session=True)
        proc = Proc(p, "kstap", "kstap: listening on")
        self.procs.append(proc)
        proc.start_reader()
        if wait:
            proc.wait_ready()
        return proc

    def tcpdump(self, out: str | Path, expression: str, *extra: str, iface: str | None = None,
                ns: str | None = None) -> Proc:
        """``ip netns exec NS tcpdump -i IF -w OUT EXPR``, packet-buffered and without the
        libpcap block timeout (immediate mode), so stopping it never loses a pending block."""
        argv = ["ip", "netns", "exec", ns or self.lab.server, "tcpdump", "-i", iface or self.lab.server_if,
                "-w", str(out), "-U", "--immediate-mode", "-Z", "root", *extra]
        if expression:
            argv.append(expression)
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
        proc = Proc(p, "tcpdump", "listening on")
        self.procs.append(proc)
        proc.start_reader()
        proc.wait_ready()
        return proc

    # traffic
    def server(self, *, echo_udp: bool = True, lifetime: float = 90.0) -> None:
        """The tiny UDP/TCP echo server in the server namespace (one per test)."""
        if self._server is not None:
            return
        cfg = {"ip": self.lab.server_ip, "udp_ports": [UDP_PORT, UDP_PORT_2], "tcp_port": TCP_PORT,
               "echo_udp": echo_udp, "lifetime": lifetime}
        p = self.lab.spawn(self.lab.server, [sys.executable, "-c", SERVER_SRC, json.dumps(cfg)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdout is not None
        line = _readline(p.stdout, READY_TIMEOUT)
        if line.strip() != b"ready":
            raise AssertionError(f"echo server did not start: {line!r} {p.stderr.read() if p.stderr else b''!r}")
        self._server = p

    def send(self, *, udp_flows: int = 1, udp_sizes: tuple[int, ...] = (0, 1, 18, 64, 200, 512, 1000, 1472),
             udp_ports: tuple[int, ...] = (UDP_PORT, UDP_PORT_2), tcp_conns: int = 2,
             tcp_sizes: tuple[int, ...] = (1, 10, 100, 700, 1400), echo_udp: bool = True,
             tag: str = "kstap", timeout: float = 60.0) -> dict[str, int]:
        """Run the known traffic from the client namespace to the server; returns what was done."""
        self.server(echo_udp=echo_udp)
        cfg = {"src": self.lab.client_ip, "dst": self.lab.server_ip, "udp_flows": udp_flows,
               "udp_sizes": list(udp_sizes), "udp_ports": list(udp_ports), "tcp_conns": tcp_conns,
               "tcp_sizes": list(tcp_sizes), "tcp_port": TCP_PORT, "echo_udp": echo_udp, "tag": tag}
        r = subprocess.run(["ip", "netns", "exec", self.lab.client, sys.executable, "-c", SENDER_SRC,
                            json.dumps(cfg)], capture_output=True, timeout=timeout)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        done: dict[str, int] = json.loads(r.stdout)
        assert done["udp_sent"] == udp_flows * len(udp_ports) * len(udp_sizes)
        assert done["tcp_conns"] == tcp_conns
        return done

    def flood(self, *, seconds: float = 20.0, limit: int = 20000, rate: float = 500.0,
              port: int = UDP_PORT, ns: str | None = None, dst: str | None = None) -> subprocess.Popen[bytes]:
        """Background UDP traffic bounded in time and count; returns once it is sending."""
        p = self.lab.spawn(ns or self.lab.client,
                           [sys.executable, "-c", FLOOD_SRC, dst or self.lab.server_ip, str(port),
                            str(seconds), str(limit), str(rate)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert p.stdout is not None
        assert _readline(p.stdout, READY_TIMEOUT).strip() == b"flooding"
        return p

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        self.procs.clear()

    # reading and checking files (bound here so test modules need no import from conftest)
    @staticmethod
    def read(path: str | Path) -> Capture:
        return read_capture(path)

    @staticmethod
    def settle(*paths: str | Path, minimum: int = 1, timeout: float = 30.0) -> list[int]:
        return wait_settled(*paths, minimum=minimum, timeout=timeout)

    @staticmethod
    def wait_count(path: str | Path, minimum: int, timeout: float = 10.0) -> int:
        return wait_count(path, minimum, timeout)

    @staticmethod
    def tshark(path: str | Path) -> TsharkFrames:
        return tshark_frames(path)

    @staticmethod
    def capinfos(path: str | Path) -> str:
        return capinfos(path)

    @staticmethod
    def summary(stderr: str) -> dict[str, int]:
        return summary_numbers(stderr)

    @staticmethod
    def per_worker(stderr: str) -> dict[int, int]:
        return per_worker(stderr)

    @staticmethod
    def nearly_ordered(times: list[Decimal]) -> bool:
        """Non-decreasing but for the kernel's µs stamping jitter (see JITTER)."""
        return disorder(times) <= JITTER

    @staticmethod
    def ends_with_isb(path: str | Path) -> bool:
        return ends_with_isb(path)


def _readline(stream: object, timeout: float) -> bytes:
    """One line from a pipe, or b'' after ``timeout`` seconds."""
    box: list[bytes] = []
    t = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)  # type: ignore[attr-defined]
    t.start()
    t.join(timeout)
    return box[0] if box else b""


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def harness(lab: Lab, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(lab, tmp_path)
    try:
        yield h
    finally:
        h.close()


# -- reading what was written ----------------------------------------------------------------------

@dataclass
class Capture:
    """Everything read from one capture file (complete blocks only)."""

    packets: list[tuple[PacketRecord, PacketInfo | None]]
    interfaces: list[Interface]
    statistics: list[Statistics]
    format: str
    error: str | None = None
    """Why reading stopped early (a cut-short file), or None."""

    @property
    def records(self) -> list[PacketRecord]:
        return [rec for rec, _ in self.packets]

    def multiset(self) -> Counter[tuple[int, int, bytes]]:
        return Counter((rec[2], rec[1], rec[3]) for rec in self.records)


def read_capture(path: str | Path) -> Capture:
    packets: list[tuple[PacketRecord, PacketInfo | None]] = []
    with open(path, "rb") as f:
        reader = CaptureReader(f, str(path))
        error = None
        try:
            for item in reader:
                packets.append(item)
        except CaptureFormatError as exc:
            error = str(exc)
    return Capture(packets, list(reader.interfaces), list(reader.statistics), reader.format, error)


def count_packets(path: str | Path) -> int:
    """Packets in the complete blocks written so far (0 if the file is not there yet)."""
    try:
        return len(read_capture(path).packets)
    except (FileNotFoundError, CaptureFormatError):
        return 0


def wait_settled(*paths: str | Path, minimum: int = 1, timeout: float = 10.0, quiet: float = 0.3) -> list[int]:
    """Wait until every file holds the same number (≥ ``minimum``) of packets for ``quiet`` seconds.

    Returns the last counts (they may differ after ``timeout``; the test's asserts then say how).
    """
    deadline = time.monotonic() + timeout
    last: list[int] = []
    since = time.monotonic()
    while time.monotonic() < deadline:
        counts = [count_packets(p) for p in paths]
        if counts != last:
            last, since = counts, time.monotonic()
        elif len(set(counts)) == 1 and counts[0] >= minimum and time.monotonic() - since >= quiet:
            return counts
        time.sleep(0.05)
    return last


def wait_count(path: str | Path, minimum: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    n = count_packets(path)
    while n < minimum and time.monotonic() < deadline:
        time.sleep(0.05)
        n = count_packets(path)
    return n


# -- tshark / capinfos -----------------------------------------------------------------------------

_ROOT_WARNING = re.compile(r'^Running as user "root" and group "root"\. This could be dangerous\.$')


def clean_stderr(text: str) -> str:
    """Wireshark tools' stderr minus their 'running as root' notice."""
    return "\n".join(line for line in text.splitlines() if line.strip() and not _ROOT_WARNING.match(line))


@dataclass
class TsharkFrames:
    lengths: list[tuple[int, int]]
    """(frame.len, frame.cap_len) per frame, in file order."""
    times: list[Decimal]
    interface_ids: list[int]
    returncode: int
    stderr: str


def tshark_frames(path: str | Path) -> TsharkFrames:
    r = subprocess.run(["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=,",
                        "-e", "frame.len", "-e", "frame.cap_len", "-e", "frame.time_epoch",
                        "-e", "frame.interface_id"], capture_output=True, text=True, timeout=60)
    lengths, times, ifids = [], [], []
    for line in r.stdout.splitlines():
        flen, clen, epoch, ifid = line.split(",")
        lengths.append((int(flen), int(clen)))
        times.append(Decimal(epoch))
        ifids.append(int(ifid or 0))
    return TsharkFrames(lengths, times, ifids, r.returncode, clean_stderr(r.stderr))


def capinfos(path: str | Path) -> str:
    r = subprocess.run(["capinfos", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


JITTER = Decimal("0.00005")
"""Largest backwards step allowed in a single-ring (one worker) file, in seconds.

TPACKET_V3 reserves a packet's slot in the ring first and stamps the time after copying it, so
when two CPUs deliver at once (a veth sees RX on one CPU and TX on another) the ring can hold a
packet stamped ~1 µs earlier after a later one; tcpdump's files show the same. kstap writes one
ring in ring order, so its single-worker file inherits these µs inversions (about one run in 20
here); the merged multi-worker file is sorted and is checked strictly.
"""


def disorder(times: list[Decimal]) -> Decimal:
    """The largest backwards step between consecutive timestamps (0 when non-decreasing)."""
    return max((a - b for a, b in itertools.pairwise(times)), default=Decimal(0)).max(Decimal(0))


def ends_with_isb(path: str | Path) -> bool:
    """The last block of a pcapng file is an Interface Statistics Block (type 5)."""
    raw = Path(path).read_bytes()
    if len(raw) < 12:
        return False
    (total,) = struct.unpack_from("<I", raw, len(raw) - 4)
    if total < 12 or total > len(raw):
        return False
    btype, head_total = struct.unpack_from("<II", raw, len(raw) - total)
    return btype == 5 and head_total == total


# -- summary lines on kstap's stderr ---------------------------------------------------------------

def summary_numbers(stderr: str) -> dict[str, int]:
    """tcpdump-style closing lines → {'captured': N, 'received': N, 'dropped': N}."""
    out = {}
    for key, pattern in (("captured", r"^(\d+) packets? captured$"),
                         ("received", r"^(\d+) packets? received by filter$"),
                         ("dropped", r"^(\d+) packets? dropped by kernel$")):
        m = re.search(pattern, stderr, re.M)
        assert m, f"no '{key}' line in kstap's stderr:\n{stderr}"
        out[key] = int(m.group(1))
    return out


def per_worker(stderr: str) -> dict[int, int]:
    m = re.search(r"^kstap: per-worker packets: (.*)$", stderr, re.M)
    assert m, f"no per-worker line in kstap's stderr:\n{stderr}"
    return {int(w): int(n) for w, n in re.findall(r"worker (\d+): (\d+)", m.group(1))}
