"""CPU per captured packet: kstap vs tcpdump vs dumpcap on identical veth traffic (``make bench``).

A :class:`kstap.demo.lab.Lab` (two throw-away network namespaces joined by a veth pair) carries
64-byte UDP datagrams from many source ports (many flows) from the client namespace to the
server address at rising target rates. For every rate step each tool captures on the server
end of the veth, one tool after the other, each with a 32 MiB ring and the kernel filter
``udp``. The sender is pinned to one CPU, the capture processes to another (taskset).

Per tool and step: packets sent, packets captured (counted in the file by ``capinfos``), kernel
drops (the tool's own closing lines), and the CPU time (user+sys) the capture process spent from
the moment it reported it was listening until it exited (its start-up is reported apart), hence
CPU microseconds per captured packet. Steps are repeated for several rounds (tool order rotated)
and the medians go into a Markdown report.

    python benchmarks/capture_cpu.py --out docs/benchmarks.md      # the full run (~10 min)
    python benchmarks/capture_cpu.py --quick --out /tmp/bench.md   # 1 round, 2 rates, 2 s

Needs root, iproute2, taskset, tcpdump, dumpcap and capinfos; gcc to build the C sender
(benchmarks/udp_blast.c), else a slower Python sender is used. Traffic and capture stay inside
the lab namespaces; every loop is bounded in time and count; namespaces and processes are
removed by name and PID whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from kstap.demo.lab import Lab  # noqa: E402

TOOLS = ("tcpdump", "dumpcap", "kstap")
KSTAP_PY = "kstap-py"
"""kstap with its C fast path switched off (KSTAP_PURE_PYTHON=1); run only when that path exists."""
FULL_RATES = ("20000", "50000", "100000", "200000", "max")
QUICK_RATES = ("20000", "100000")
DST_PORT = 9  # discard; nothing listens on it in the server namespace
READY = {"tcpdump": "listening on", "dumpcap": "Capturing on", "kstap": "listening on", KSTAP_PY: "listening on"}
PROFILER = """
import cProfile, importlib, sys
out, args = sys.argv[1], sys.argv[2:]
for name in ("typer", "rich", "kstap.cli.app", "kstap.cli.tap", "kstap.cli.report", "kstap.pipeline",
             "kstap.capture.backends", "kstap.capture.afpacket", "kstap.sinks.files", "kstap.formats.pcapng"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
from kstap.cli.main import run
prof = cProfile.Profile()
hooked = False
try:  # start at the 'listening' line, when the capture loop begins
    from kstap.cli.report import TextReporter
    _listening = TextReporter.listening
    def _start(self, *a, **kw):
        r = _listening(self, *a, **kw)
        prof.enable()
        return r
    TextReporter.listening = _start
    hooked = True
except (ImportError, AttributeError):
    pass
try:  # stop when the capture source is closed (the loop and its final drain are over)
    from kstap.capture.afpacket import AfPacketSource
    _close = AfPacketSource.close
    def _stop(self, *a, **kw):
        prof.disable()
        return _close(self, *a, **kw)
    AfPacketSource.close = _stop
except (ImportError, AttributeError):
    pass
if not hooked:
    prof.enable()
print("profiled: " + ("capture loop" if hooked else "whole run"), file=sys.stderr, flush=True)
try:
    code = run(args)
finally:
    prof.disable()
    prof.dump_stats(out)
sys.exit(code)
"""
"""``python -c PROFILER OUT tap ...``: kstap's CLI with the capture loop (from its 'listening' line until the
source is closed) under cProfile; set-up and teardown are not profiled (the whole run if the hooks are gone)."""
WAITS = ("select.poll", "time.sleep", "select.select", "select.epoll")
"""Calls that block rather than compute; cProfile's clock is wall time, so they are listed apart."""
FINGERPRINTED = ("kstap/capture/afpacket.py", "kstap/pipeline/loop.py", "kstap/sinks/files.py",
                 "kstap/formats/pcapng.py")
AUTO_VALUE_MARK = "<!-- auto-value -->"
GOAL_VS_TCPDUMP = 3.0
GOAL_VS_DUMPCAP = 0.7

_children: list[subprocess.Popen[bytes]] = []
"""Every process this script started and has not reaped yet (killed by PID on the way out)."""


# --------------------------------------------------------------------------------------------
# results


@dataclass
class Step:
    """One tool capturing one traffic step."""

    round: int
    rate: str
    tool: str
    sent: int = 0
    arrived: int = 0
    """Packets the server end of the veth received during the step (its rx counter)."""
    captured: int = 0
    """Packets in the capture file (capinfos)."""
    tool_captured: int = 0
    """Packets the tool said it captured."""
    kernel_drops: int = 0
    other_drops: int = 0
    """dumpcap only: its own and 'flushed' drops."""
    cpu_s: float = 0.0
    """user+sys of the capture process from 'listening' to just before SIGINT (the capture itself)."""
    exit_cpu_s: float = 0.0
    """user+sys from SIGINT to exit (final drain, closing the file, interpreter shutdown)."""
    user_s: float = 0.0
    sys_s: float = 0.0
    """user and sys of the whole process life (wait4)."""
    startup_cpu_s: float = 0.0
    wakeups: int = 0
    """Voluntary context switches (blocking waits that ended) between 'listening' and SIGINT."""
    send_elapsed_s: float = 0.0
    note: str = ""
    """The first 'profiled: ...' line of the tool's stderr, if any."""
    error: str = ""

    @property
    def us_per_packet(self) -> float:
        return self.cpu_s * 1e6 / self.captured if self.captured else float("nan")

    @property
    def us_per_packet_with_exit(self) -> float:
        return (self.cpu_s + self.exit_cpu_s) * 1e6 / self.captured if self.captured else float("nan")


@dataclass
class Config:
    rates: list[str]
    seconds: float
    rounds: int
    flows: int
    payload: int
    buffer_mib: int
    capture_cpu: str
    sender_cpu: str
    tail_s: float
    tools: list[str] = field(default_factory=lambda: list(TOOLS))
    kstap_src: str = str(REPO)
    """Directory whose ``kstap`` package the kstap runs import (a snapshot taken at start)."""
    sender_kind: str = ""
    workdir: str = ""
    pinned_note: str = ""


@dataclass
class Run:
    config: Config
    machine: dict[str, str]
    command: str
    steps: list[Step] = field(default_factory=list)
    started: str = ""
    finished: str = ""
    load_before: str = ""
    load_after: str = ""
    kstap_path: str = ""
    fingerprint: dict[str, str] = field(default_factory=dict)
    kstap_origin: str = "this work tree"
    fingerprint_changed: list[str] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# process handling


def _popen(argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
    p: subprocess.Popen[bytes] = subprocess.Popen(list(argv), **kw)  # type: ignore[call-overload]
    _children.append(p)
    return p


def _forget(p: subprocess.Popen[bytes]) -> None:
    if p in _children:
        _children.remove(p)


def _kill_children() -> None:
    """Stop every child still running, by PID (SIGTERM, then SIGKILL)."""
    for p in list(_children):
        if p.returncode is None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
    for p in list(_children):
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        _forget(p)


def _wait4(p: subprocess.Popen[bytes], timeout: float) -> tuple[int, float, float] | None:
    """Reap ``p`` with wait4; (exit code, user s, sys s) of it and its reaped children, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            _forget(p)
            return p.returncode, ru.ru_utime, ru.ru_stime
        time.sleep(0.02)
    return None


def _cpu_so_far(pid: int) -> float:
    """Seconds on CPU (user+sys) of every thread of ``pid`` so far, at ns resolution."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wakeups_so_far(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid``: how often it blocked and was woken."""
    total = 0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
    return total


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------------------------
# traffic


def build_sender(workdir: str, choice: str) -> tuple[list[str], str]:
    """argv prefix of the sender and a description: the C sender if gcc builds it, else Python."""
    if choice in ("auto", "c"):
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc:
            exe = os.path.join(workdir, "udp_blast")
            r = subprocess.run([gcc, "-O2", "-Wall", "-o", exe, str(HERE / "udp_blast.c")],
                               capture_output=True, text=True, timeout=120)
            if r.returncode == 0:
                return [exe], "benchmarks/udp_blast.c (gcc -O2, raw socket + sendmmsg)"
            print(f"gcc failed, using the Python sender:\n{r.stderr}", file=sys.stderr)
        elif choice == "c":
            raise SystemExit("--sender c: no gcc on this machine")
        else:
            print("no gcc: using the (slower) Python sender", file=sys.stderr)
    return [sys.executable, str(Path(__file__).resolve()), "--_send"], "Python sender (raw socket, sendto)"


def python_sender(argv: Sequence[str]) -> int:
    """The fallback sender: same arguments and output as udp_blast.c, one sendto per packet."""
    src, dst, rate_s, seconds_s, flows_s, payload_s, dport_s = argv
    rate, seconds, flows, payload = float(rate_s), float(seconds_s), int(flows_s), int(payload_s)
    if not (0 < seconds <= 600 and 1 <= flows <= 40000 and 0 <= payload <= 1400):
        print("argument out of range", file=sys.stderr)
        return 2
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__(0, True))
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + payload, 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    packets = [ip + struct.pack("!HHHH", 20000 + i, int(dport_s), 8 + payload, 0) + b"k" * payload
               for i in range(flows)]
    to = (dst, 0)
    batch = max(1, min(64, int(rate / 10000))) if rate > 0 else 64
    limit = int(rate * seconds) if rate > 0 else 1 << 62
    sent = errors = 0
    start = time.monotonic()
    end = start + seconds
    sendto = s.sendto
    while not stop[0] and sent < limit:
        now = time.monotonic()
        if now >= end:
            break
        if rate > 0:
            due = start + (sent + batch) / rate
            if due > now:
                time.sleep(min(due, end) - now)
                continue
        for _ in range(min(batch, limit - sent)):
            try:
                sendto(packets[sent % flows], to)
                sent += 1
            except (BlockingIOError, InterruptedError, OSError):
                errors += 1
                break
    print(f"sent {sent} elapsed {time.monotonic() - start:.6f} errors {errors}", flush=True)
    return 0


def _rx_packets(ns: str, dev: str) -> int:
    r = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", dev], capture_output=True, text=True,
                       timeout=10)
    try:
        return int(json.loads(r.stdout)[0]["stats64"]["rx"]["packets"])
    except (ValueError, KeyError, IndexError):
        return -1


def send(lab: Lab, sender: list[str], cfg: Config, rate: str, seconds: float) -> tuple[int, float]:
    """One traffic step from the client namespace; returns (packets sent, seconds)."""
    argv = ["taskset", "-c", cfg.sender_cpu, "ip", "netns", "exec", lab.client, *sender,
            lab.client_ip, lab.server_ip, "0" if rate == "max" else rate, f"{seconds:g}",
            str(cfg.flows), str(cfg.payload), str(DST_PORT)]
    p = _popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate(timeout=10)
        _forget(p)
        raise RuntimeError("the sender did not stop in time") from None
    _forget(p)
    m = re.search(rb"sent (\d+) elapsed ([\d.]+)", out)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"sender failed ({p.returncode}): {err.decode(errors='replace').strip()}")
    return int(m.group(1)), float(m.group(2))


# --------------------------------------------------------------------------------------------
# capture


def tool_argv(tool: str, lab: Lab, path: str, cfg: Config, profile_to: str | None = None) -> list[str]:
    ns, dev = lab.server, lab.server_if
    pin = ["taskset", "-c", cfg.capture_cpu]
    if tool == "tcpdump":
        return [*pin, "ip", "netns", "exec", ns, "tcpdump", "-i", dev, "-w", path,
                "-B", str(cfg.buffer_mib * 1024), "udp"]
    if tool == "dumpcap":
        return [*pin, "ip", "netns", "exec", ns, "dumpcap", "-i", dev, "-w", path,
                "-B", str(cfg.buffer_mib), "-f", "udp"]
    kstap = ["-c", PROFILER, profile_to] if profile_to else ["-m", "kstap"]
    return [*pin, sys.executable, *kstap, "tap", "--netns", ns, "-i", dev, "-w", path,
            "-B", str(cfg.buffer_mib), "-f", "udp"]


def tool_env(tool: str, cfg: Config) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KSTAP_PURE_PYTHON", None)
    env["PYTHONPATH"] = cfg.kstap_src
    if tool == KSTAP_PY:
        env["KSTAP_PURE_PYTHON"] = "1"
    return env


def count_packets(path: str) -> int:
    r = subprocess.run(["capinfos", "-T", "-r", "-c", "-M", path], capture_output=True, text=True, timeout=600)
    try:
        return int(r.stdout.strip().split("\t")[-1])
    except ValueError:
        raise RuntimeError(f"capinfos failed on {path}: {r.stderr.strip()}") from None


def parse_summary(tool: str, text: str) -> tuple[int, int, int]:
    """(packets the tool says it captured, kernel drops, other drops) from its stderr."""
    if tool == "dumpcap":
        cap = re.findall(r"Packets captured: (\d+)", text)
        m = re.search(r"Packets received/dropped on interface '[^']*': (\d+)/(\d+)(?: \(pcap:(\d+)/dumpcap:(\d+)"
                      r"/flushed:(\d+))?", text)
        if not m:
            raise RuntimeError("no 'Packets received/dropped' line from dumpcap")
        total = int(m.group(2))
        kernel = int(m.group(3)) if m.group(3) is not None else total
        return (int(cap[-1]) if cap else -1), kernel, total - kernel
    cap = re.findall(r"^(\d+) packets? captured", text, re.M)
    drop = re.findall(r"^(\d+) packets? dropped by kernel", text, re.M)
    if not drop:
        raise RuntimeError(f"no 'dropped by kernel' line from {tool}")
    return (int(cap[-1]) if cap else -1), int(drop[-1]), 0


def run_step(lab: Lab, sender: list[str], cfg: Config, tool: str, rate: str, rnd: int,
             profile_to: str | None = None) -> Step:
    step = Step(round=rnd, rate=rate, tool=tool)
    path = os.path.join(cfg.workdir, f"{tool}-{rate}-{rnd}.{'pcap' if tool == 'tcpdump' else 'pcapng'}")
    errpath = os.path.join(cfg.workdir, f"{tool}-{rate}-{rnd}.stderr")
    with open(errpath, "wb") as errf:
        p = _popen(tool_argv(tool, lab, path, cfg, profile_to), stdout=subprocess.DEVNULL, stderr=errf,
                   cwd=cfg.kstap_src, env=tool_env(tool, cfg), start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while READY[tool] not in Path(errpath).read_text(errors="replace"):
            if p.poll() is not None:
                raise RuntimeError(f"{tool} exited early: {Path(errpath).read_text(errors='replace').strip()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{tool} did not report that it was listening within 30 s")
            time.sleep(0.02)
        time.sleep(0.3)  # let it reach its capture loop
        with open(f"/proc/{p.pid}/comm") as f:
            comm = f.read().strip()
        if comm not in (tool, "python", "python3", Path(sys.executable).name[:15]):
            raise RuntimeError(f"pid {p.pid} is {comm!r}, not {tool}: CPU would be measured on the wrong process")
        step.startup_cpu_s = _cpu_so_far(p.pid)
        wake0 = _wakeups_so_far(p.pid)
        rx0 = _rx_packets(lab.server, lab.server_if)
        step.sent, step.send_elapsed_s = send(lab, sender, cfg, rate, cfg.seconds)
        time.sleep(cfg.tail_s)  # tcpdump's blocks retire after 1 s: let every tool see every packet
        step.arrived = _rx_packets(lab.server, lab.server_if) - rx0
        before_stop = _cpu_so_far(p.pid)
        step.wakeups = _wakeups_so_far(p.pid) - wake0
        p.send_signal(signal.SIGINT)
        reaped = _wait4(p, 60)
        if reaped is None:
            raise RuntimeError(f"{tool} did not exit within 60 s of SIGINT")
        code, user, sys_ = reaped
        text = Path(errpath).read_text(errors="replace")
        if code not in (0, 130, -2):
            raise RuntimeError(f"{tool} exited with {code}: {text.strip()[-500:]}")
        step.user_s, step.sys_s = user, sys_
        step.cpu_s = before_stop - step.startup_cpu_s
        step.exit_cpu_s = max(0.0, user + sys_ - before_stop)
        step.tool_captured, step.kernel_drops, step.other_drops = parse_summary(tool, text)
        m = re.search(r"^profiled: (.*)$", text, re.M)
        step.note = m.group(1) if m else ""
        step.captured = count_packets(path)
    except RuntimeError as exc:
        step.error = str(exc)
    finally:
        if p.returncode is None and p.poll() is None:
            p.kill()
            _wait4(p, 10)
        _forget(p)
        for leftover in (path, errpath):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    return step



def profile_step(lab: Lab, sender: list[str], cfg: Config, tool: str, rate: str) -> str:
    """One more step of ``tool`` (a kstap variant) under cProfile; the top functions as Markdown."""
    import pstats

    prof = os.path.join(cfg.workdir, f"{tool}.prof")
    step = run_step(lab, sender, cfg, tool, rate, 0, profile_to=prof)
    scope = step.note or "whole run"
    try:
        if step.error:
            return f"(profiling failed: {step.error})"
        st = pstats.Stats(prof)
        rows = []
        busy = waiting = 0.0
        for (filename, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
            if any(w in func for w in WAITS):
                waiting += tt
                continue
            busy += tt
            where = func if filename == "~" else f"{func} ({_short(filename)}:{line})"
            rows.append((tt, ct, nc, where))
        rows.sort(reverse=True)
        n = step.captured

        def per(t: float) -> str:
            return _fmt(t * 1e6 / n, 3) if n else "-"

        out = [f"cProfile of `{tool}` over one {cfg.seconds:g} s step at {_rate_title(rate)}, {n:,} packets "
               f"captured; profiled: {scope} (the capture loop runs from the 'listening' line to the source's "
               "close, so set-up, file close and interpreter exit are left out). cProfile times are wall-clock and "
               "it slows every Python-level call, so read the shares, not the absolute times. "
               f"Blocked in poll/sleep: {waiting:.2f} s, left out of the table.",
               "",
               "| function | calls | own time s | share of busy time | own µs / captured packet | cumulative s |",
               "|---|---:|---:|---:|---:|---:|"]
        for tt, ct, nc, where in rows[:15]:
            out.append(f"| `{where}` | {nc:,} | {tt:.3f} | {100 * tt / busy:.1f}% | {per(tt)} | {ct:.3f} |")
        out.append(f"| (all busy time) | | {busy:.3f} | 100% | {per(busy)} | |")
        return "\n".join(out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(prof)


def _short(filename: str) -> str:
    for marker in ("/kstap/", "/lib/python"):
        if marker in filename:
            return filename[filename.index(marker) + 1:]
    return os.path.basename(filename)


# --------------------------------------------------------------------------------------------
# machine and report


def machine_info() -> dict[str, str]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def first_line(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        text = (r.stdout or r.stderr).strip()
        return text.splitlines()[0] if text else "?"

    from kstap import __version__

    libpcap = "?"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        r = subprocess.run(["tcpdump", "--version"], capture_output=True, text=True, timeout=20)
        libpcap = next((ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("libpcap")), "?")
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.0f} GiB"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model or platform.processor() or "?",
        "memory": mem,
        "kernel": platform.release(),
        "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "kstap": __version__,
        "tcpdump": first_line(["tcpdump", "--version"]),
        "libpcap": libpcap,
        "dumpcap": first_line(["dumpcap", "--version"]),
    }


def snapshot_kstap(workdir: str, source: Path = REPO, attempts: int = 5) -> tuple[str, bool]:
    """Copy the kstap package into ``workdir`` so every kstap run of this benchmark uses one version,
    whatever is edited in the work tree meanwhile. Returns (directory to import it from, whether
    its C block encoder is importable and switchable with KSTAP_PURE_PYTHON). Retries while the copy
    does not import (caught mid-edit)."""
    check = (
        "import inspect, sys, kstap, kstap.cli.app, kstap.pipeline, kstap.capture.afpacket as a; "
        "assert kstap.__file__.startswith(sys.argv[1]), kstap.__file__; "
        "print('fast' if a.encode_block is not None and 'KSTAP_PURE_PYTHON' in inspect.getsource(a) else 'pure')"
    )
    problem = ""
    for attempt in range(attempts):
        dst = os.path.join(workdir, f"src{attempt}")
        shutil.copytree(source / "kstap", os.path.join(dst, "kstap"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        env = dict(os.environ, PYTHONPATH=dst)
        env.pop("KSTAP_PURE_PYTHON", None)
        r = subprocess.run([sys.executable, "-c", check, dst], env=env, cwd=dst, capture_output=True, text=True,
                           timeout=120)
        if r.returncode == 0:
            return dst, r.stdout.strip() == "fast"
        problem = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        shutil.rmtree(dst, ignore_errors=True)
        time.sleep(5)
    raise SystemExit(f"the kstap package does not import ({problem}); nothing measured")


def fingerprint(root: Path) -> dict[str, str]:
    """Short hashes of kstap's hot-path sources and any compiled helper under ``root``."""
    import hashlib

    paths = [root / f for f in FINGERPRINTED] + sorted((root / "kstap").rglob("*.so"))
    out = {}
    for path in paths:
        with contextlib.suppress(OSError):
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return out


def _median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def _fmt_int(x: float) -> str:
    return "-" if x != x else f"{round(x):,}"


def _fmt(x: float, digits: int = 2) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


@dataclass
class Agg:
    sent: float
    arrived: float
    captured: float
    kernel_drops: float
    max_drops: int
    other_drops: float
    cpu_ms: float
    exit_ms: float
    us: float
    us_exit: float
    us_all: list[float]
    startup_ms: float
    wakeups_per_s: float
    ok_rounds: int
    errors: list[str]


def aggregate(run: Run) -> dict[tuple[str, str], Agg]:
    out: dict[tuple[str, str], Agg] = {}
    for rate in run.config.rates:
        for tool in run.config.tools:
            steps = [s for s in run.steps if s.rate == rate and s.tool == tool]
            ok = [s for s in steps if not s.error]
            out[(rate, tool)] = Agg(
                sent=_median([s.sent for s in ok]),
                arrived=_median([s.arrived for s in ok]),
                captured=_median([s.captured for s in ok]),
                kernel_drops=_median([s.kernel_drops for s in ok]),
                max_drops=max((s.kernel_drops for s in ok), default=0),
                other_drops=_median([s.other_drops for s in ok]),
                cpu_ms=_median([s.cpu_s * 1000 for s in ok]),
                exit_ms=_median([s.exit_cpu_s * 1000 for s in ok]),
                us=_median([s.us_per_packet for s in ok]),
                us_exit=_median([s.us_per_packet_with_exit for s in ok]),
                us_all=[s.us_per_packet for s in ok],
                startup_ms=_median([s.startup_cpu_s * 1000 for s in ok]),
                wakeups_per_s=_median([s.wakeups / (0.3 + run.config.seconds + run.config.tail_s) for s in ok]),
                ok_rounds=len(ok),
                errors=[f"round {s.round}: {s.error}" for s in steps if s.error],
            )
    return out


def _rate_title(rate: str) -> str:
    return "max (as fast as the sender goes)" if rate == "max" else f"{int(rate):,} pps target"


def _ratio(a: float, b: float) -> float:
    return a / b if a == a and b == b and b > 0 else float("nan")


def _mark(value: float, goal: float) -> str:
    if value != value:
        return "-"
    return f"{value:.2f} {'✓' if value <= goal else '✗'}"


@dataclass
class Goals:
    cpu_t: list[bool] = field(default_factory=list)
    cpu_d: list[bool] = field(default_factory=list)
    drops: list[bool] = field(default_factory=list)


def judge(run: Run, agg: dict[tuple[str, str], Agg], variant: str) -> tuple[Goals, list[str]]:
    """The goals for one kstap variant, and the Markdown rows of its ratio table."""
    goals = Goals()
    rows = []
    for rate in run.config.rates:
        k, t, d = agg[(rate, variant)], agg[(rate, "tcpdump")], agg[(rate, "dumpcap")]
        rt, rd = _ratio(k.us, t.us), _ratio(k.us, d.us)
        if rt == rt:
            goals.cpu_t.append(rt <= GOAL_VS_TCPDUMP)
        if rd == rd:
            goals.cpu_d.append(rd <= GOAL_VS_DUMPCAP)
        if t.ok_rounds and k.ok_rounds and t.max_drops == 0:
            goals.drops.append(k.max_drops == 0)
            drop_goal = "met" if k.max_drops == 0 else "**missed**"
        else:
            drop_goal = "n/a (tcpdump dropped too)" if t.ok_rounds else "-"
        rows.append(f"| {_rate_title(rate)} | {_mark(rt, GOAL_VS_TCPDUMP)} | {_mark(rd, GOAL_VS_DUMPCAP)} | "
                    f"{_fmt(_ratio(k.us_exit, t.us_exit))} / {_fmt(_ratio(k.us_exit, d.us_exit))} | "
                    f"{_fmt_int(t.kernel_drops)} (max {t.max_drops:,}) | {_fmt_int(k.kernel_drops)} "
                    f"(max {k.max_drops:,}) | {drop_goal} |")
    return goals, rows


def _goal_state(v: list[bool]) -> str:
    if not v:
        return "no rate to judge"
    return "**met** at every rate" if all(v) else f"**missed** at {v.count(False)} of {len(v)} rates"


def _closest(run: Run, agg: dict[tuple[str, str], Agg], variant: str, other: str, goal: float) -> str:
    """The rate where ``variant`` came closest to (or went furthest past) ``goal`` x ``other``."""
    ratios = [(_ratio(agg[(r, variant)].us, agg[(r, other)].us), r) for r in run.config.rates]
    ratios = [(x, r) for x, r in ratios if x == x]
    if not ratios:
        return ""
    worst, rate = max(ratios)
    margin = "" if worst > goal else (" - within 10% of the limit, so a noisier run could tip it" if worst > 0.9 * goal
                                      else "")
    return f" (worst: {worst:.2f} at {_rate_title(rate)}{margin})"


def render(run: Run) -> str:
    cfg = run.config
    agg = aggregate(run)
    m = run.machine
    variants = [t for t in cfg.tools if t.startswith("kstap")]
    lines: list[str] = []
    add = lines.append
    add("# Benchmarks: kstap vs tcpdump vs dumpcap, CPU per captured packet")
    add("")
    add("Generated by `benchmarks/capture_cpu.py` (`make bench`); re-run it rather than editing by hand.")
    add("")
    add("## Goals (from the issue)")
    add("")
    add(f"1. kstap's CPU time per captured packet ≤ {GOAL_VS_TCPDUMP:g}x tcpdump's;")
    add(f"2. kstap's CPU time per captured packet ≤ {GOAL_VS_DUMPCAP:g}x dumpcap's;")
    add("3. zero kernel drops for kstap wherever tcpdump has none.")
    add("")
    add("## Machine and command")
    add("")
    add("| | |")
    add("|---|---|")
    for key in ("nproc", "cpu", "memory", "kernel", "os", "python", "kstap", "tcpdump", "libpcap", "dumpcap"):
        add(f"| {key} | {m.get(key, '?')} |")
    add(f"| kstap hot path | {run.kstap_path} |")
    add(f"| load average before / after | {run.load_before} / {run.load_after} |")
    add(f"| run | {run.started} to {run.finished} |")
    add("")
    add("```")
    add(run.command)
    add("```")
    add("")
    prints = ", ".join(f"`{k}` {v}" for k, v in run.fingerprint.items())
    add(f"kstap ran from a copy of its package ({run.kstap_origin}) taken when the run started "
        f"(sha256 prefixes: {prints}).")
    if run.fingerprint_changed:
        add(f"The work tree changed during the run ({', '.join(run.fingerprint_changed)}); those edits are not in "
            "these numbers.")
    add("")
    add("## Method")
    add("")
    add(f"- A `kstap.demo.lab.Lab`: namespaces `client` and `server` joined by a veth pair; nothing else is "
        f"touched. Sender: {cfg.sender_kind}, in the client namespace, pinned to CPU {cfg.sender_cpu}; "
        f"{cfg.payload}-byte UDP payloads ({cfg.payload + 42}-byte Ethernet frames) from {cfg.flows} source "
        f"ports (= {cfg.flows} flows) to the server address, port {DST_PORT}.")
    add(f"- Rates: {', '.join(_rate_title(r) for r in cfg.rates)}; each step lasts {cfg.seconds:g} s. "
        f"{cfg.rounds} round(s); in every round each tool captures its own, identical step, the tools one after "
        "another (order rotated between rounds). Tables show the median over rounds.")
    add(f"- Capture, pinned to CPU {cfg.capture_cpu}, on the server end of the veth, ring "
        f"{cfg.buffer_mib} MiB for all, default snaplen (262144), kernel filter `udp`:")
    add(f"  - `taskset -c C ip netns exec NS tcpdump -i IF -w F.pcap -B {cfg.buffer_mib * 1024} udp` (pcap)")
    add(f"  - `taskset -c C ip netns exec NS dumpcap -i IF -w F.pcapng -B {cfg.buffer_mib} -f udp` (pcapng)")
    add(f"  - `taskset -c C python -m kstap tap --netns NS -i IF -w F.pcapng -B {cfg.buffer_mib} -f udp` "
        "(pcapng)")
    if KSTAP_PY in cfg.tools:
        add(f"  - `{KSTAP_PY}`: the same kstap command with `KSTAP_PURE_PYTHON=1`, i.e. without its C block "
            "encoder (the pure-Python path a machine without the compiled helper runs)")
    add(f"- Each tool is started; once it prints that it is listening (+0.3 s) its CPU time so far is noted "
        f"(*startup*). Then the traffic step, then {cfg.tail_s:g} s of quiet (tcpdump hands over a partly "
        "filled ring block only after its 1 s timeout), then SIGINT. *CPU* = user+sys of the capture process "
        "between *startup* and SIGINT (`/proc/PID/task/*/schedstat`, ns resolution): the capture loop and "
        "the file writes. *exit* = user+sys from SIGINT to exit (`wait4()` rusage minus the above): final "
        "drain, closing the file and, for kstap, the Python interpreter's shutdown. `ip netns exec` and "
        "`taskset` exec the tool, so the measured PID is the tool's (checked).")
    add("- *captured* = packets in the file (`capinfos -c`); *kernel drops* = the tool's closing line "
        "('N packets dropped by kernel'; dumpcap: `pcap:` of 'Packets received/dropped'); *arrived* = the rx "
        "counter of the server's veth end over the step (a few ARP packets included). "
        "*µs/pkt* = CPU µs per captured packet; *+exit* adds the exit share; *wakeups/s* = voluntary context "
        "switches (the process blocked in poll and was woken) per second of the measured window.")
    add("- The kernel's copy of each packet into the ring runs in the sender's softirq on the sender's CPU "
        "and is charged to no capture tool: the numbers are the tools' own user-space work and system calls.")
    if cfg.pinned_note:
        add(f"- {cfg.pinned_note}")
    add("- The machine was shared with other jobs during the run: CPU time per process is barely affected, "
        "but drops at high rates depend on how much of the capture CPU a tool got.")
    add("")
    add("## Results")
    add("")
    for rate in cfg.rates:
        add(f"### {_rate_title(rate)}")
        add("")
        add("| tool | sent | arrived | captured | kernel drops (max) | CPU ms | **µs/pkt** | µs/pkt per round "
            "| wakeups/s | exit ms | µs/pkt +exit | startup ms |")
        add("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
        for tool in cfg.tools:
            a = agg[(rate, tool)]
            rounds = ", ".join(_fmt(u) for u in a.us_all) or "-"
            drops = f"{_fmt_int(a.kernel_drops)} ({a.max_drops:,})"
            if a.other_drops:
                drops += f" + {_fmt_int(a.other_drops)} own"
            add(f"| {tool} | {_fmt_int(a.sent)} | {_fmt_int(a.arrived)} | {_fmt_int(a.captured)} | {drops} | "
                f"{_fmt(a.cpu_ms, 1)} | **{_fmt(a.us)}** | {rounds} | {_fmt_int(a.wakeups_per_s)} | "
                f"{_fmt(a.exit_ms, 1)} | {_fmt(a.us_exit)} | {_fmt(a.startup_ms, 0)} |")
        errs = [f"{tool} {x}" for tool in cfg.tools for x in agg[(rate, tool)].errors]
        if errs:
            add("")
            add("Failed steps (left out of the medians): " + "; ".join(errs))
        add("")
    add("## Ratios and goals")
    add("")
    judged: dict[str, Goals] = {}
    for variant in variants:
        goals, rows = judge(run, agg, variant)
        judged[variant] = goals
        add(f"### {variant}")
        add("")
        add(f"| rate | {variant} / tcpdump (goal ≤ {GOAL_VS_TCPDUMP:g}) | {variant} / dumpcap "
            f"(goal ≤ {GOAL_VS_DUMPCAP:g}) | same, +exit (tcpdump / dumpcap) | tcpdump drops | {variant} drops "
            "| drop goal |")
        add("|---|---:|---:|---:|---:|---:|---|")
        lines.extend(rows)
        add("")
    add("Ratios use the median µs/pkt (capture loop, without exit). The drop goal is checked on every round "
        "(max over rounds), at the rates where tcpdump dropped nothing in any round.")
    add("")
    add("## Verdict")
    add("")
    for variant in variants:
        g = judged[variant]
        add(f"- `{variant}`: CPU/pkt ≤ {GOAL_VS_TCPDUMP:g}x tcpdump: {_goal_state(g.cpu_t)}"
            f"{_closest(run, agg, variant, 'tcpdump', GOAL_VS_TCPDUMP)}; "
            f"≤ {GOAL_VS_DUMPCAP:g}x dumpcap: {_goal_state(g.cpu_d)}"
            f"{_closest(run, agg, variant, 'dumpcap', GOAL_VS_DUMPCAP)}; "
            f"no kernel drops where tcpdump has none: {_goal_state(g.drops)}.")
    add("")
    add(headroom_note(run, agg))
    add("")
    for variant in variants:
        parts = []
        for rate in cfg.rates:
            k, t, d = agg[(rate, variant)], agg[(rate, "tcpdump")], agg[(rate, "dumpcap")]
            parts.append(f"{_rate_title(rate)}: {_fmt(k.us)} vs tcpdump {_fmt(t.us)} / dumpcap {_fmt(d.us)}")
        add(f"µs per packet, `{variant}`: " + "; ".join(parts) + ".")
        add("")
    if run.profiles:
        add("## Where kstap's time goes")
        add("")
        for tool, text in run.profiles.items():
            add(f"### {tool}")
            add("")
            add(text)
            add("")
    return "\n".join(lines)


def headroom_note(run: Run, agg: dict[tuple[str, str], Agg]) -> str:
    """Say how hard the capture side was pushed: the drop goal means little if nobody could drop."""
    cfg = run.config
    top = cfg.rates[-1]
    sent = _median([agg[(top, t)].sent for t in cfg.tools])
    busiest = max(cfg.tools, key=lambda t: agg[(top, t)].cpu_ms if agg[(top, t)].cpu_ms == agg[(top, t)].cpu_ms
                  else -1.0)
    load = agg[(top, busiest)].cpu_ms / 1000 / cfg.seconds
    drops = any(agg[(r, t)].max_drops for r in cfg.rates for t in cfg.tools)
    text = (f"At the highest step ({_rate_title(top)}) the sender got about {_fmt_int(sent / cfg.seconds)} pps out; "
            f"the busiest capture process there, {busiest}, used about {100 * load:.0f}% of one core while the "
            "traffic ran.")
    if not drops:
        text += (" No tool dropped a packet at any rate: the sender's core (which also carries the kernel's "
                 "per-packet copy into the ring) saturates before any capture process does, so the drop goal "
                 "is met here without being stressed.")
    return text


def write_section(out: Path, section: str, begin: str, end: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in place of the text from ``begin``
    through ``end`` in ``out``, or append it after a blank line; the rest of the file stays, a blank line
    after the section."""
    old = out.read_text() if out.exists() else ""
    if begin in old and end in old[old.index(begin):]:
        head = old[: old.index(begin)]
        rest = old[old.index(end, old.index(begin)) + len(end):].lstrip("\n")
    else:
        head, rest = (old.rstrip("\n") + "\n\n" if old.strip() else ""), ""
    out.write_text(head + section.rstrip("\n") + "\n" + ("\n" + rest if rest else ""))


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--out", default="docs/benchmarks.md", help="Markdown report to write")
    ap.add_argument("--quick", action="store_true", help="development run: 1 round, 2 rates, 2 s steps")
    ap.add_argument("--rates", help="comma-separated pps targets, 'max' for as fast as possible")
    ap.add_argument("--seconds", type=float, help="length of one traffic step (default 5, quick 2)")
    ap.add_argument("--rounds", type=int, help="repetitions (default 3, quick 1)")
    ap.add_argument("--flows", type=int, default=1024, help="distinct UDP source ports")
    ap.add_argument("--payload", type=int, default=64, help="UDP payload bytes")
    ap.add_argument("--buffer-mib", type=int, default=32, help="ring size given to every tool, MiB")
    ap.add_argument("--tail", type=float, default=1.5, help="quiet seconds after a step before SIGINT")
    ap.add_argument("--sender", choices=("auto", "c", "python"), default="auto")
    ap.add_argument("--no-pure-python", action="store_true",
                    help=f"skip the {KSTAP_PY} variant (kstap without its C helper)")
    ap.add_argument("--profile-rate", default=None,
                    help="profile kstap with cProfile in one extra step at this rate "
                         "(default 200000, quick: none; 'none' to skip)")
    ap.add_argument("--kstap-src", type=Path, default=REPO,
                    help="directory holding the kstap package to measure (default: this work tree), "
                         "e.g. a patched copy to compare")
    ap.add_argument("--json", help="also dump the raw per-step results here")
    ap.add_argument("--_send", nargs=7, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args._send:
        return python_sender(args._send)
    if os.geteuid() != 0:
        print("capture_cpu.py needs root (network namespaces, packet capture)", file=sys.stderr)
        return 2
    missing = [t for t in ("ip", "taskset", "tcpdump", "dumpcap", "capinfos") if not shutil.which(t)]
    if missing:
        print(f"missing tools: {', '.join(missing)} (make system-deps installs them)", file=sys.stderr)
        return 2
    rates = args.rates.split(",") if args.rates else list(QUICK_RATES if args.quick else FULL_RATES)
    for r in rates:
        if r != "max" and not (r.isdigit() and 0 < int(r) <= 10_000_000):
            print(f"bad rate {r!r}", file=sys.stderr)
            return 2
    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 5.0)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if not (0 < seconds <= 60 and 1 <= rounds <= 20):
        print("--seconds must be in (0, 60] and --rounds in [1, 20]", file=sys.stderr)
        return 2
    profile_rate = args.profile_rate or ("none" if args.quick else "200000")
    if profile_rate != "none" and profile_rate != "max" and not profile_rate.isdigit():
        print(f"bad --profile-rate {profile_rate!r}", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    note = ""
    if len(cpus) >= 2:
        capture_cpu, sender_cpu = str(cpus[0]), str(cpus[1])
    else:
        capture_cpu = sender_cpu = str(cpus[0])
        note = "Only one CPU: sender and capture share it, so the numbers include contention."
    cfg = Config(rates=rates, seconds=seconds, rounds=rounds, flows=args.flows, payload=args.payload,
                 buffer_mib=args.buffer_mib, capture_cpu=capture_cpu, sender_cpu=sender_cpu, tail_s=args.tail,
                 pinned_note=note)
    py = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    script = os.path.relpath(Path(__file__).resolve(), REPO)
    run = Run(config=cfg, machine=machine_info(), command=" ".join(shlex.quote(a) for a in [py, script, *sys.argv[1:]]))

    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    workdir = tempfile.mkdtemp(prefix="kstap-bench-", dir="/dev/shm" if _roomy("/dev/shm") else None)
    cfg.workdir = workdir
    t0 = time.monotonic()
    try:
        cfg.kstap_src, fast = snapshot_kstap(workdir, args.kstap_src.resolve())
        if args.kstap_src.resolve() != REPO:
            run.kstap_origin = f"from {args.kstap_src.resolve()}, not this work tree"
        run.fingerprint = fingerprint(Path(cfg.kstap_src))
        if fast and not args.no_pure_python:
            cfg.tools.append(KSTAP_PY)
        run.kstap_path = ("C block encoder (kstap/capture/_ringfast)" if fast
                          else "pure Python (no compiled _ringfast helper importable)")
        tools = cfg.tools
        total = rounds * len(rates) * len(tools)
        sender, cfg.sender_kind = build_sender(workdir, args.sender)
        run.started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        run.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"kstap: {run.kstap_path}; tools: {', '.join(tools)}", flush=True)
        with Lab() as lab:
            print(f"lab {lab.client} -> {lab.server} ({lab.server_if}), sender: {cfg.sender_kind}", flush=True)
            send(lab, sender, cfg, "1000", 0.2)  # resolve ARP before anything is measured
            n = 0
            for rnd in range(1, rounds + 1):
                for rate in rates:
                    shift = (rnd - 1) % len(tools)
                    for tool in tools[shift:] + tools[:shift]:
                        n += 1
                        step = run_step(lab, sender, cfg, tool, rate, rnd)
                        run.steps.append(step)
                        status = f"ERROR {step.error}" if step.error else (
                            f"sent {step.sent:>9,} captured {step.captured:>9,} drops {step.kernel_drops:>9,} "
                            f"cpu {step.cpu_s * 1000:8.1f} ms {step.us_per_packet:6.2f} µs/pkt "
                            f"(+exit {step.exit_cpu_s * 1000:5.1f} ms)")
                        print(f"[{n:>3}/{total} {time.monotonic() - t0:5.0f}s] round {rnd} {rate:>7} {tool:<8} "
                              f"{status}", flush=True)
            if profile_rate != "none":
                for tool in (t for t in tools if t.startswith("kstap")):
                    print(f"profiling {tool} at {profile_rate}", flush=True)
                    run.profiles[tool] = profile_step(lab, sender, cfg, tool, profile_rate)
        run.load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
        run.finished = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    finally:
        _kill_children()
        shutil.rmtree(workdir, ignore_errors=True)
    after = fingerprint(args.kstap_src.resolve())
    run.fingerprint_changed = sorted(k for k in set(run.fingerprint) | set(after)
                                     if run.fingerprint.get(k) != after.get(k))
    if run.fingerprint_changed:
        print("note: the work tree's kstap changed during the run (the benchmark used its snapshot from the "
              f"start): {', '.join(run.fingerprint_changed)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": asdict(cfg), "machine": run.machine,
                                               "kstap_path": run.kstap_path, "fingerprint": run.fingerprint,
                                               "steps": [asdict(s) for s in run.steps]}, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = ""  # sections of other benchmarks (auto_value.py's, any_cpu.py's) after their markers survive
    old = out.read_text() if out.exists() else ""
    starts = [i for i in (old.find(AUTO_VALUE_MARK), old.find("<!-- benchmarks/any_cpu.py: begin -->")) if i >= 0]
    if starts:
        kept = "\n" + old[min(starts):]
    out.write_text(render(run) + kept)
    print(f"wrote {out}")
    return 0


def _roomy(path: str, need: int = 4 << 30) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize >= need and os.access(path, os.W_OK)


if __name__ == "__main__":
    sys.exit(main())
