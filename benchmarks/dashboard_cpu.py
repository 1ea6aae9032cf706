"""What the live dashboard costs, and how fast ``kstap --help`` answers (``make bench-dashboard``).

1. **Frame cost**: :func:`kstap.dashboard.view.render` plus rich's rendering of the frame to a
   terminal, for heavy snapshots (8 workers, an hour of one-second history), in ms per frame.
2. **The same capture four ways**: a ``--read --realtime`` replay of a synthetic UDP pcap (many
   flows, ``--pps`` packets/s for ``--seconds``) through :func:`kstap.pipeline.run_tap`, each in a
   fresh process, with: no reporter output (quiet), status lines, ``--json``, and the live dashboard
   at 1 Hz drawing on a forced terminal (/dev/null). CPU = user+sys of the whole process while
   capturing; "extra" is against quiet, as a share of quiet's CPU and in % of one core.
3. **Idle Live at 1 Hz**: the dashboard alone (no capture), CPU in % of one core.
4. **``python -m kstap --help`` wall time** (median of N runs) and, when above 0.3 s, the slowest
   imports from ``python -X importtime``.

No root, no network: everything stays in this process tree and a temporary directory.

    python benchmarks/dashboard_cpu.py --out docs/benchmarks-dashboard.md
    python benchmarks/dashboard_cpu.py --quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

MODES = ("quiet", "lines", "json", "dashboard")
HELP_BUDGET = 0.3


# -- helpers -------------------------------------------------------------------------------------------------
def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _heavy_snapshot(workers: int = 8, seconds: int = 3600):  # type: ignore[no-untyped-def]
    from kstap.dashboard import samples

    s = samples.several_workers(workers, elapsed=float(seconds))
    s.memory_history = [(float(t), 0.5 + 0.2 * ((t // 60) % 2)) for t in range(seconds + 1)]
    return s


def write_pcap(path: Path, pps: int, seconds: float) -> int:
    """A classic pcap of 64-byte UDP frames, ``pps`` per second, from 4096 source ports (flows)."""
    n = int(pps * seconds)
    header = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1)
    t0 = 1_700_000_000_000_000_000
    step = 1_000_000_000 // pps
    chunks = [header]
    for i in range(n):
        sport = 10000 + i % 4096
        udp = struct.pack("!HHHH", sport, 9, 8 + 18, 0) + bytes(18)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp
        frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip
        ts = t0 + i * step
        chunks.append(struct.pack("<IIII", ts // 1_000_000_000, ts % 1_000_000_000, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(chunks))
    return n


# -- 1. frame cost -------------------------------------------------------------------------------------------------
def frame_cost(repeat: int) -> dict[str, float]:
    from rich.console import Console

    from kstap.dashboard import view

    out: dict[str, float] = {}
    snap = _heavy_snapshot()
    for width in (100, 160):
        console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system="truecolor")
        console.print(view.render(snap, width=width))  # warm up
        t0, c0 = time.perf_counter(), _cpu()
        for _ in range(repeat):
            console.file = io.StringIO()
            console.print(view.render(snap, width=width))
        out[f"frame_ms_w{width}"] = (time.perf_counter() - t0) / repeat * 1000
        out[f"frame_cpu_ms_w{width}"] = (_cpu() - c0) / repeat * 1000
    return out


# -- 2. one capture, one reporter (run in a child process) ---------------------------------------------------------
def run_mode(mode: str, pcap: str, out_dir: str) -> dict[str, float]:
    from kstap.cli.outputs import JsonReporter, LineReporter, RunInfo
    from kstap.config import OutputSettings, TapSettings
    from kstap.pipeline import StopFlag, run_tap

    out = OutputSettings(path=os.path.join(out_dir, f"{mode}.pcapng"))
    settings = TapSettings(read=pcap, realtime=True, output=out)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as this child process
    stop = StopFlag()
    reporter: object
    if mode == "quiet":
        reporter = LineReporter(devnull, progress=False)
    elif mode == "lines":
        reporter = LineReporter(devnull)
    elif mode == "json":
        reporter = JsonReporter(devnull, run=RunInfo.from_settings(settings))
    else:
        from rich.console import Console

        from kstap.dashboard.live import LiveDashboard

        reporter = LiveDashboard(stop, console=Console(file=devnull, width=100, force_terminal=True),
                                 keyboard=False, initial=RunInfo.from_settings(settings).snapshot())
    c0, t0 = _cpu(), time.perf_counter()
    summary = run_tap(settings, reporter, stop)  # type: ignore[arg-type]
    cpu, wall = _cpu() - c0, time.perf_counter() - t0
    frames = getattr(reporter, "frames", 0)
    close = getattr(reporter, "close", None)
    if close is not None:
        close()
    return {"cpu": cpu, "wall": wall, "captured": summary.captured, "frames": frames}


def capture_modes(pps: int, seconds: float, rounds: int) -> dict[str, dict[str, float]]:
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="kstap-dash-bench-") as tmp:
        pcap = Path(tmp) / "in.pcap"
        write_pcap(pcap, pps, seconds)
        for r in range(rounds):
            order = MODES[r % len(MODES):] + MODES[: r % len(MODES)]
            for mode in order:
                proc = subprocess.run([sys.executable, __file__, "--child", mode, str(pcap), tmp],
                                      capture_output=True, text=True, timeout=seconds * 3 + 60, check=True,
                                      cwd=REPO)
                results[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {m: {k: statistics.median(x[k] for x in runs) for k in runs[0]} for m, runs in results.items()}


# -- 3. Live alone -----------------------------------------------------------------------------------------------------
def idle_live(seconds: float) -> dict[str, float]:
    from rich.console import Console

    from kstap.dashboard.live import LiveDashboard

    snap = _heavy_snapshot(4, 600)
    c0 = _cpu()
    time.sleep(seconds)
    base = _cpu() - c0
    with open(os.devnull, "w") as devnull:
        dash = LiveDashboard(console=Console(file=devnull, width=100, force_terminal=True), keyboard=False)
        done = threading.Event()

        def feed() -> None:
            t = 0.0
            while not done.wait(1.0):
                t += 1
                snap.elapsed = 600 + t
                dash.progress(snap)

        feeder = threading.Thread(target=feed, daemon=True)
        c0 = _cpu()
        dash.start()
        feeder.start()
        time.sleep(seconds)
        done.set()
        feeder.join()
        dash.close()
        cpu = _cpu() - c0
    return {"idle_cpu_pct": base / seconds * 100, "live_cpu_pct": cpu / seconds * 100, "frames": dash.frames}


# -- 4. --help ---------------------------------------------------------------------------------------------------------
def help_time(runs: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100"}
    times: dict[str, list[float]] = {"kstap --help": [], "kstap tap --help": [], "python -c pass": []}
    argv = {"kstap --help": ["-m", "kstap", "--help"], "kstap tap --help": ["-m", "kstap", "tap", "--help"],
            "python -c pass": ["-c", "pass"]}
    for _ in range(runs):
        for name, args in argv.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, *args], env=env, capture_output=True, check=True, timeout=30, cwd=REPO)
            times[name].append(time.perf_counter() - t0)
    out: dict[str, object] = {name: {"median": statistics.median(v), "min": min(v)} for name, v in times.items()}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "kstap", "--help"], env=env, capture_output=True,
                          text=True, check=True, timeout=30, cwd=REPO)
    top: list[tuple[int, str]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cum_us, name = line[len("import time:"):].split("|")
        name = name[1:]  # one separating space; more means a nested import
        if not name.startswith(" "):
            top.append((int(cum_us), name.strip()))
    out["top_level_imports"] = sorted(top, reverse=True)[:12]
    return out


# -- report ----------------------------------------------------------------------------------------------------
def report(args: argparse.Namespace, frames: dict[str, float], modes: dict[str, dict[str, float]],
           idle: dict[str, float], helps: dict[str, object]) -> str:
    import rich

    from kstap import __version__

    quiet = modes["quiet"]["cpu"]
    lines = [
        "# Benchmarks: the live dashboard's CPU and `kstap --help`",
        "",
        "Generated by `benchmarks/dashboard_cpu.py` (`make bench-dashboard`); re-run it rather than editing by hand.",
        "",
        "## Goals (from the issue)",
        "",
        "1. the dashboard adds at most 5 % to the CPU of the same capture without it;",
        f"2. `kstap --help` answers in at most {HELP_BUDGET} s.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| nproc | {os.cpu_count()} |",
        f"| kernel | {platform.release()} |",
        f"| python | {platform.python_version()} |",
        f"| kstap | {__version__} |",
        f"| rich | {getattr(rich, '__version__', None) or _dist_version('rich')} |",
        f"| run | {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC |",
        "",
        "```",
        " ".join([".venv/bin/python", "benchmarks/dashboard_cpu.py", *sys.argv[1:]]),
        "```",
        "",
        "## 1. One frame",
        "",
        "`view.render` of a heavy snapshot (8 workers, one hour of per-second history for the rate and memory "
        "curves) plus rich rendering it to a terminal, averaged over "
        f"{args.frames} frames:",
        "",
        "| width | wall ms / frame | CPU ms / frame |",
        "|---|---|---|",
        *(f"| {w} | {frames[f'frame_ms_w{w}']:.1f} | {frames[f'frame_cpu_ms_w{w}']:.1f} |" for w in (100, 160)),
        "",
        f"At 1 Hz that is {frames['frame_cpu_ms_w100'] / 10:.2f} % of one core at width 100.",
        "",
        "## 2. The same capture, four ways",
        "",
        f"`run_tap` on a `--read --realtime` replay of {args.pps} UDP packets/s from 4096 flows for {args.seconds:g} s "
        f"(written to a pcapng), each mode in a fresh process, median of {args.rounds} round(s), modes rotated:",
        "",
        "| reporter | CPU s | extra vs quiet | extra, % of one core | frames drawn | packets |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        m = modes[mode]
        extra = m["cpu"] - quiet
        lines.append(f"| {mode} | {m['cpu']:.3f} | {extra / quiet * 100:+.1f} % | {extra / m['wall'] * 100:+.2f} % "
                     f"| {int(m['frames'])} | {int(m['captured'])} |")
    dash_extra = (modes["dashboard"]["cpu"] - quiet) / quiet * 100
    noise = max(abs(modes[m]["cpu"] - quiet) / quiet * 100 for m in ("lines", "json"))
    lines += [
        "",
        f"Status lines and NDJSON cost next to nothing (a line a second), so their distance from quiet, up to "
        f"{noise:.1f} %, is the run-to-run noise of this machine; differences below it are not significant.",
        "",
        f"Goal 1 (≤ 5 % extra for the dashboard): **{'met' if dash_extra <= 5 else 'NOT met'}** ({dash_extra:+.1f} %).",
        "",
        "## 3. The live dashboard alone",
        "",
        f"`LiveDashboard` refreshing at 1 Hz for {args.idle_seconds:g} s, fed a 4-worker snapshot every second, "
        "drawing to /dev/null as a terminal:",
        "",
        "| | % of one core |",
        "|---|---|",
        f"| idle process | {idle['idle_cpu_pct']:.2f} |",
        f"| with the live dashboard ({int(idle['frames'])} frames) | {idle['live_cpu_pct']:.2f} |",
        "",
        "## 4. `kstap --help`",
        "",
        f"Wall time of a fresh `python -m kstap …` process, {args.help_runs} runs:",
        "",
        "| command | median s | min s |",
        "|---|---|---|",
    ]
    for name in ("python -c pass", "kstap --help", "kstap tap --help"):
        h = helps[name]
        assert isinstance(h, dict)
        lines.append(f"| `{name}` | {h['median']:.3f} | {h['min']:.3f} |")
    main = helps["kstap --help"]
    assert isinstance(main, dict)
    ok = main["median"] <= HELP_BUDGET
    lines += ["", f"Goal 2 (≤ {HELP_BUDGET} s): **{'met' if ok else 'NOT met'}** ({main['median']:.3f} s).", "",
              "Slowest top-level imports of `kstap --help` (`python -X importtime`, cumulative):", "",
              "| module | ms |", "|---|---|"]
    top = helps["top_level_imports"]
    assert isinstance(top, list)
    lines += [f"| `{name}` | {us / 1000:.1f} |" for us, name in top]
    return "\n".join(lines) + "\n"


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(run_mode(sys.argv[2], sys.argv[3], sys.argv[4])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pps", type=int, default=20000, help="replayed packets per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of replayed capture per mode")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the four modes")
    parser.add_argument("--frames", type=int, default=50, help="frames for the frame-cost average")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--help-runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="1 round of 4 s, fewer frames and --help runs")
    parser.add_argument("--out", help="write the Markdown report here (else stdout)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.frames, args.idle_seconds, args.help_runs = 4.0, 1, 10, 4.0, 3
    frames = frame_cost(args.frames)
    modes = capture_modes(args.pps, args.seconds, args.rounds)
    idle = idle_live(args.idle_seconds)
    helps = help_time(args.help_runs)
    text = report(args, frames, modes, idle, helps)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
