"""Soak: kstap for N minutes at saturating traffic inside a memory cgroup; does it hold?

    .venv/bin/python benchmarks/soak.py --minutes 10 --json /tmp/soak.json

Not part of the test suite (it takes N minutes per mode). Needs root, iproute2, gcc and a cgroup v1
memory hierarchy (``/sys/fs/cgroup/memory``); the cpu hierarchy is used when present.

What runs, per mode (``auto`` first, then ``full``), inside a fresh :class:`kstap.demo.lab.Lab`:

- **kstap** ``tap --netns SERVER -i VETH -w soak.pcapng -C 200 -W 2 --entries … --json``, started in
  a new cgroup v1 memory cgroup limited to ``--limit-mib`` (default 200 MiB, no swap) and, when the
  cpu hierarchy exists, a CFS quota of ``--cpus`` cores (default 1.0): what a Kubernetes limit does.
  ``--dissect-memory`` is set far above the limit on purpose, so only the sampling mode stands
  between the dissector and the limit. The full-mode run gets ``--memory-budget`` = the limit (so
  its alerts know the budget) but, being full mode, it does not act on it.
- **Traffic**, from the client namespace to the server's veth address only:
  ``benchmarks/udp_blast.c`` (compiled here with gcc -O2) sending 64-byte UDP datagrams as fast as
  it can over ``--flows`` source ports (many flows) to a closed port; ``kstap.demo.traffic client``
  (HTTP/1.1 at 50 req/s, DNS at 20 q/s, against ``kstap.demo.traffic serve``); and a *held-heads*
  HTTP client that opens ``--conn-rate`` connections per second, each sending a 48 KiB request head
  in 12 pieces over 6 s and then holding the connection (head unfinished) for 30 s: each such
  connection is ~48 KiB the dissector must buffer, ~150 MiB in steady state when every flow is
  dissected.
- **Sampling**, every second: the kstap process's RSS (``/proc/PID/status`` VmRSS), the cgroup's
  ``memory.usage_in_bytes`` and working set (usage - ``total_inactive_file``), its ``oom_kill``
  count, and kstap's own ``stats`` event (captured, received, kernel drops, sampling rate).

Reported per mode: OOM kills (must be 0 in auto mode), exit status, the RSS slope (least squares,
MiB/min, over the samples after a 60 s warm-up, over the second half, and over the whole run), the
working set's slope over the second half, peak RSS and cgroup usage,
kernel drops per minute, the sampling rate over time. The full-mode run stops at its first OOM kill.
Everything is stopped by PID and every cgroup and namespace removed, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from kstap.demo.lab import Lab  # noqa: E402

MEMCG = Path("/sys/fs/cgroup/memory")
CPUCG = Path("/sys/fs/cgroup/cpu")
WARMUP = 60.0
HEADS_PORT = 8080
BLAST_PORT = 7777

HEADS_SERVER = r"""
import asyncio, resource, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def handle(reader, writer):
    try:
        while await reader.read(65536):
            pass
    except Exception:
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]), backlog=4096)
    print("READY", flush=True)
    await asyncio.sleep(float(sys.argv[3]))
asyncio.run(main())
"""

HEADS_CLIENT = r"""
import asyncio, resource, sys, time
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
server, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
HEAD, CHUNKS, EVERY, HOLD = 48 << 10, 12, 0.5, 30.0
async def one(i):
    try:
        reader, writer = await asyncio.open_connection(server, port)
        line = f"POST /upload/{i} HTTP/1.1\r\nHost: soak\r\n".encode()
        filler = (b"X-Filler: " + b"a" * 500 + b"\r\n") * (HEAD // CHUNKS // 512)
        writer.write(line)
        for _ in range(CHUNKS):
            writer.write(filler)
            await writer.drain()
            await asyncio.sleep(EVERY)
        await asyncio.sleep(HOLD)
        writer.close()
    except OSError:
        pass
async def main():
    end = time.monotonic() + seconds
    tasks, i = set(), 0
    while time.monotonic() < end:
        for _ in range(max(1, int(rate / 10))):
            t = asyncio.create_task(one(i)); i += 1
            tasks.add(t); t.add_done_callback(tasks.discard)
        await asyncio.sleep(0.1)
    for t in list(tasks):
        t.cancel()
asyncio.run(main())
"""


@dataclass
class Sample:
    t: float
    rss: int
    usage: int
    working_set: int
    oom_kills: int
    captured: int = 0
    received: int = 0
    dropped: int = 0
    rate: float | None = None
    cpu: float | None = None
    """kstap's own reading: CPU cores in use, and its limit (the quota)."""
    cpu_limit: float | None = None
    memory: int | None = None
    """kstap's own reading of the working set it controls against."""
    reason: str | None = None
    """The controller's last reason (auto mode)."""


@dataclass
class ModeResult:
    mode: str
    seconds_planned: float
    seconds_run: float = 0.0
    returncode: int | None = None
    oom_kills: int = 0
    first_oom_at: float | None = None
    rss_slope_mib_per_min: float | None = None
    rss_slope_whole_mib_per_min: float | None = None
    rss_slope_second_half_mib_per_min: float | None = None
    usage_slope_second_half_mib_per_min: float | None = None
    peak_rss_mib: float = 0.0
    peak_usage_mib: float = 0.0
    max_usage_in_bytes_mib: float = 0.0
    final: dict[str, object] = field(default_factory=dict)
    drops_per_minute: list[int] = field(default_factory=list)
    received_per_minute: list[int] = field(default_factory=list)
    rate_per_minute: list[float | None] = field(default_factory=list)
    rss_per_minute_mib: list[float] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    sent_udp: int = 0
    stderr_tail: str = ""
    samples: list[Sample] = field(default_factory=list)


# -- helpers -----------------------------------------------------------------------------------------------

def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x (None with fewer than 3 points)."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def build_blaster(workdir: Path) -> str:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        raise SystemExit("soak: needs gcc to build benchmarks/udp_blast.c")
    exe = workdir / "udp_blast"
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(exe), str(HERE / "udp_blast.c")], check=True, timeout=120)
    return str(exe)


@contextlib.contextmanager
def cgroups(name: str, limit: int, cpus: float | None) -> Iterator[list[Path]]:
    """A v1 memory cgroup limited to ``limit`` (and a cpu cgroup with a quota); removed afterwards."""
    made: list[Path] = []
    try:
        mem = MEMCG / name
        mem.mkdir()
        made.append(mem)
        (mem / "memory.limit_in_bytes").write_text(str(limit))
        with contextlib.suppress(OSError):
            (mem / "memory.memsw.limit_in_bytes").write_text(str(limit))
        if cpus and (CPUCG / "cpu.cfs_quota_us").exists():
            cpu = CPUCG / name
            cpu.mkdir()
            made.append(cpu)
            (cpu / "cpu.cfs_period_us").write_text("100000")
            (cpu / "cpu.cfs_quota_us").write_text(str(int(cpus * 100000)))
        yield made
    finally:
        for cg in reversed(made):
            procs = cg / "cgroup.procs"
            for pid in procs.read_text().split() if procs.exists() else []:
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
            for _ in range(100):
                try:
                    cg.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def pin(cpu: int | None) -> list[str]:
    """``taskset -c CPU`` (nothing when not asked for or taskset is missing)."""
    if cpu is None or cpu < 0 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpu)]


def read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def memcg_figures(cg: Path) -> tuple[int, int, int]:
    """(usage, working set, oom_kill count) of a v1 memory cgroup."""
    usage = read_int(cg / "memory.usage_in_bytes")
    inactive = 0
    with contextlib.suppress(OSError):
        m = re.search(r"^total_inactive_file (\d+)$", (cg / "memory.stat").read_text(), re.M)
        inactive = int(m.group(1)) if m else 0
    kills = 0
    with contextlib.suppress(OSError):
        m = re.search(r"oom_kill (\d+)", (cg / "memory.oom_control").read_text())
        kills = int(m.group(1)) if m else 0
    return usage, max(0, usage - inactive), kills


def rss_of(pid: int) -> int:
    try:
        m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return 0
    return int(m.group(1)) * 1024 if m else 0


def stop_proc(p: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, by PID."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(timeout=5)


# -- one mode ----------------------------------------------------------------------------------------------

def run_mode(mode: str, seconds: float, args: argparse.Namespace, blaster: str, work: Path) -> ModeResult:
    result = ModeResult(mode, seconds)
    limit = args.limit_mib << 20
    name = f"kstap-soak-{os.getpid()}-{mode}"
    with Lab(subnet=79) as lab, cgroups(name, limit, args.cpus) as groups:
        memcg = groups[0]
        life = str(seconds + 120)
        traffic_srv = lab.spawn(lab.server, [sys.executable, "-m", "kstap.demo.traffic", "serve",
                                             "--address", lab.server_ip, "--lifetime", life],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        heads_srv = lab.spawn(lab.server, [sys.executable, "-c", HEADS_SERVER, lab.server_ip, str(HEADS_PORT), life],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for p in (traffic_srv, heads_srv):
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != b"READY":
                raise SystemExit(f"soak: a server did not start ({line!r})")
        out = work / f"soak-{mode}.pcapng"
        entries = work / f"soak-{mode}.entries.ndjson"
        cmd = [sys.executable, "-m", "kstap", "tap", "--netns", lab.server, "-i", lab.server_if,
               "-w", str(out), "-C", "200", "-W", "2", "-B", str(args.buffer_mib), "--mode", mode,
               "--entries", str(entries), "--dissect-memory", "4096", "--duration", str(seconds), "--json"]
        if mode == "full":
            cmd += ["--memory-budget", f"{args.limit_mib}Mi"]
        enter = " && ".join(f'echo $$ > "{g / "cgroup.procs"}"' for g in groups)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        kst = subprocess.Popen(["sh", "-c", f'{enter} && exec "$@"', "sh", *pin(args.kstap_cpu), *cmd],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work, env=env)
        lab.procs.append(kst)  # type: ignore[arg-type]
        latest: dict[str, object] = {}
        events: list[dict[str, object]] = []
        err_lines: list[str] = []

        def pump_out() -> None:
            assert kst.stdout is not None
            for line in kst.stdout:
                with contextlib.suppress(ValueError):
                    ev = json.loads(line)
                    if ev.get("event") == "stats":
                        latest.clear()
                        latest.update(ev)
                    elif ev.get("event") in ("alert", "summary", "start"):
                        events.append(ev)

        def pump_err() -> None:
            assert kst.stderr is not None
            for line in kst.stderr:
                err_lines.append(line.rstrip("\n"))

        readers = [threading.Thread(target=pump_out, daemon=True), threading.Thread(target=pump_err, daemon=True)]
        for t in readers:
            t.start()
        deadline = time.monotonic() + 30
        while not any(e.get("event") == "start" for e in events):
            if kst.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("soak: kstap did not start:\n" + "\n".join(err_lines[-20:]))
            time.sleep(0.1)

        t0 = time.monotonic()
        end = t0 + seconds
        client = lab.spawn(lab.client, [sys.executable, "-m", "kstap.demo.traffic", "client", "--server",
                                        lab.server_ip, "--duration", str(seconds), "--http-rps", "50",
                                        "--dns-qps", "20", "--udp-pps", "0"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        heads = lab.spawn(lab.client, [sys.executable, "-c", HEADS_CLIENT, lab.server_ip, str(HEADS_PORT),
                                       str(args.conn_rate), str(seconds)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        blast: subprocess.Popen[bytes] | None = None
        sent = 0
        try:
            while time.monotonic() < end:
                if blast is None or blast.poll() is not None:
                    if blast is not None and blast.stdout is not None:
                        m = re.search(rb"sent (\d+)", blast.stdout.read())
                        sent += int(m.group(1)) if m else 0
                    left = min(600.0, end - time.monotonic())
                    if left >= 1:
                        argv = [*pin(args.sender_cpu), blaster, lab.client_ip, lab.server_ip, str(args.pps),
                                f"{left:.0f}", str(args.flows), "64", str(BLAST_PORT)]
                        blast = lab.spawn(lab.client, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                usage, ws, kills = memcg_figures(memcg)
                s = Sample(round(time.monotonic() - t0, 2), rss_of(kst.pid), usage, ws, kills)
                if latest:
                    s.captured = int(latest.get("captured", 0))  # type: ignore[call-overload]
                    s.received = int(latest.get("received", 0))  # type: ignore[call-overload]
                    s.dropped = int(latest.get("dropped", 0))  # type: ignore[call-overload]
                    s.rate = latest.get("rate")  # type: ignore[assignment]
                    res = latest.get("resources") or {}
                    ctl = latest.get("controller") or {}
                    assert isinstance(res, dict) and isinstance(ctl, dict)
                    s.cpu, s.cpu_limit, s.memory = res.get("cpu_cores"), res.get("cpu_limit"), res.get("memory_bytes")
                    s.reason = ctl.get("reason")
                result.samples.append(s)
                if kills and result.first_oom_at is None:
                    result.first_oom_at = s.t
                if kst.poll() is not None:
                    break
                time.sleep(max(0.0, t0 + len(result.samples) - time.monotonic()))
        finally:
            for p in (blast, client, heads):
                if p is not None:
                    stop_proc(p)
            if blast is not None and blast.stdout is not None:
                m = re.search(rb"sent (\d+)", blast.stdout.read() or b"")
                sent += int(m.group(1)) if m else 0
            try:
                kst.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop_proc(kst)
            for t in readers:
                t.join(timeout=5)
            result.max_usage_in_bytes_mib = read_int(memcg / "memory.max_usage_in_bytes") / 2**20
            result.oom_kills = memcg_figures(memcg)[2]
            stop_proc(traffic_srv)
            stop_proc(heads_srv)
        result.seconds_run = round(time.monotonic() - t0, 1)
        result.returncode = kst.returncode
        result.sent_udp = sent
        result.stderr_tail = "\n".join(err_lines[-12:])
        result.alerts = [str(e.get("message")) for e in events if e.get("event") == "alert"][:50]
        summary = next((e for e in events if e.get("event") == "summary"), None)
        if summary:
            result.final = {k: summary.get(k) for k in ("captured", "received", "dropped", "drop_ratio", "flows_seen",
                                                       "flows_kept", "shed_flows", "final_rate", "stopped_by",
                                                       "exit_code")}
        for f in work.glob(f"soak-{mode}*.pcapng"):
            f.unlink()
    summarise(result)
    return result


def summarise(r: ModeResult) -> None:
    mib = 2**20
    pts = [(s.t / 60, s.rss / mib) for s in r.samples if s.rss]
    r.rss_slope_whole_mib_per_min = _round(slope(pts))
    r.rss_slope_mib_per_min = _round(slope([(t, y) for t, y in pts if t * 60 >= WARMUP]))
    half = max((s.t for s in r.samples), default=0) / 2 / 60
    r.rss_slope_second_half_mib_per_min = _round(slope([(t, y) for t, y in pts if t >= half]))
    r.usage_slope_second_half_mib_per_min = _round(slope([(s.t / 60, s.working_set / mib) for s in r.samples
                                                          if s.t / 60 >= half]))
    r.peak_rss_mib = round(max((s.rss for s in r.samples), default=0) / mib, 1)
    r.peak_usage_mib = round(max((s.usage for s in r.samples), default=0) / mib, 1)
    minutes = int(max((s.t for s in r.samples), default=0) // 60) + 1
    prev_drop = prev_recv = 0
    for m in range(minutes):
        inside = [s for s in r.samples if m * 60 <= s.t < (m + 1) * 60]
        if not inside:
            continue
        last = inside[-1]
        r.drops_per_minute.append(last.dropped - prev_drop)
        r.received_per_minute.append(last.received - prev_recv)
        prev_drop, prev_recv = last.dropped, last.received
        rates = [s.rate for s in inside if s.rate is not None]
        r.rate_per_minute.append(round(sum(rates) / len(rates), 4) if rates else None)
        r.rss_per_minute_mib.append(round(sum(s.rss for s in inside) / len(inside) / mib, 1))


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def resummarise(path: str) -> list[ModeResult]:
    """Recompute the figures of a ``--json`` file (e.g. after changing :func:`summarise`)."""
    raw = json.loads(Path(path).read_text())
    out = []
    for r in raw["results"]:
        samples = [Sample(**s) for s in r.pop("samples")]
        known = {k: v for k, v in r.items() if k in ModeResult.__dataclass_fields__}
        m = ModeResult(**known)
        m.samples = samples
        m.drops_per_minute, m.received_per_minute, m.rate_per_minute, m.rss_per_minute_mib = [], [], [], []
        summarise(m)
        out.append(m)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="per mode (default 10)")
    ap.add_argument("--full-minutes", type=float, default=None, help="full mode's run (default: --minutes)")
    ap.add_argument("--modes", default="auto,full")
    ap.add_argument("--limit-mib", type=int, default=200, help="memory cgroup limit (default 200 MiB)")
    ap.add_argument("--cpus", type=float, default=1.0, help="CFS quota in cores (0: none)")
    ap.add_argument("--pps", type=int, default=0, help="UDP blaster rate (0: as fast as it goes)")
    ap.add_argument("--flows", type=int, default=20000, help="UDP flows (source ports)")
    ap.add_argument("--conn-rate", type=float, default=100.0, help="held-heads connections per second")
    ap.add_argument("--kstap-cpu", type=int, default=0, help="pin kstap to this CPU (-1: no pinning)")
    ap.add_argument("--sender-cpu", type=int, default=1, help="pin the UDP sender to this CPU (-1: no pinning)")
    ap.add_argument("--buffer-mib", type=int, default=8, help="kstap -B")
    ap.add_argument("--json", help="write the full results (with every sample) here")
    ap.add_argument("--resummarise", metavar="JSON", help="only recompute the figures of an earlier --json file")
    args = ap.parse_args()
    if args.resummarise:
        for r in resummarise(args.resummarise):
            print(json.dumps({k: v for k, v in asdict(r).items() if k not in ("samples", "stderr_tail", "alerts")}))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("soak: needs root (network namespaces, cgroups)")
    if not (MEMCG / "memory.limit_in_bytes").exists():
        raise SystemExit("soak: needs a cgroup v1 memory hierarchy at /sys/fs/cgroup/memory")
    results = []
    with tempfile.TemporaryDirectory(prefix="kstap-soak-") as tmp:
        work = Path(tmp)
        blaster = build_blaster(work)
        for mode in args.modes.split(","):
            minutes = args.full_minutes if mode == "full" and args.full_minutes else args.minutes
            print(f"soak: {mode} mode for {minutes:g} min ...", file=sys.stderr, flush=True)
            r = run_mode(mode, minutes * 60, args, blaster, work)
            results.append(r)
            brief = {k: v for k, v in asdict(r).items() if k not in ("samples", "stderr_tail")}
            print(json.dumps(brief), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": [asdict(r) for r in results]},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
