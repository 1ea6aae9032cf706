"""What a node's worker costs: CPU of ``kstap worker`` per offered packet, with a stream reader attached.

    .venv/bin/python benchmarks/worker_cost.py [--rounds 3] [--interface any|veth] [--cli] [--out docs/benchmarks.md]

On a node, kstap's capture runs in the DaemonSet's ``kstap worker`` (``-i any``: a cooked socket)
and streams BATCH frames to the CLI; that process is what a CPU or memory limit throttles or kills.
Here one worker captures in a lab namespace (kstap.demo.lab.Lab), 200 kpps of UDP over 5,000
flows (benchmarks/udp_blast.c, 5 s) arrive on its veth, and a reader follows ``/v1/stream`` to the
end, as the CLI does. Reported: the worker's CPU (user+sys, every thread) over the traffic and a
1.5 s tail, per offered packet, for full mode, percentage 10 % and auto at rate 1.0, and what a
worker costs a second with its reader attached and no traffic at all (``idle``); medians of
``--rounds`` rounds run side by side. Worker on CPU 0, sender on CPU 1. Needs root and gcc.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import capture_cpu as cc  # noqa: E402

from kstap.demo.lab import Lab  # noqa: E402

MARK = "<!-- worker-cost -->"
END = "<!-- worker-cost: end -->"
IDLE = "idle (no traffic; full mode)"
MODES = {"full": ["--mode", "full"],
         "percentage 10 %": ["--mode", "percentage", "--rate", "0.1", "--seed", "7"],
         "auto (rate 1.0)": ["--mode", "auto", "--rate", "1", "--seed", "7"],
         IDLE: ["--mode", "full"]}
PPS, SECONDS, FLOWS, TAIL_S = 200_000, 5.0, 5000, 1.5


def follow(port: int, token: str, got: list[int]) -> None:
    """The CLI's part: read the stream to its end (its bytes counted in ``got``)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/stream",
                                 headers={"X-Kstap-Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            while chunk := resp.read(1 << 20):
                got[0] += len(chunk)
    except OSError:
        pass  # the worker stopped


CLI_DRIVER = """
import signal, sys
from kstap.config import OutputSettings, TapSettings
from kstap.contracts import relay
from kstap.pipeline import StopFlag
from kstap.pipeline.assembly import run_remote
from kstap.remote.client import RemoteSource, WorkerEndpoint

class Quiet:  # the Reporter surface, nothing rendered (as with --no-dashboard and no --json)
    def listening(self, interfaces, backend, workers): print("cli listening", flush=True)
    def progress(self, snapshot): pass
    def event(self, event): pass
    def warning(self, message): pass

port, token, out = sys.argv[1:4]
reporter = Quiet()
source = RemoteSource([WorkerEndpoint("bench", f"http://127.0.0.1:{port}", token)], on_event=relay(reporter))
stop = StopFlag()
signal.signal(signal.SIGTERM, lambda *_: stop.set(signal.SIGTERM))
summary = run_remote(TapSettings(interfaces=["(cluster)"], output=OutputSettings(path=out)), reporter, stop, source)
print("cli captured", summary.captured, flush=True)
"""
"""``--cli``: the CLI's side of a cluster capture (kstap.pipeline.assembly.run_remote, as ``kstap tap -n``
runs it): the worker's stream merged and written to a pcapng file."""


def start_cli(port: int, token: str, workdir: str) -> tuple[subprocess.Popen[bytes], Path]:
    """The CLI's capture attached to the worker on ``port``, once it listens; (process, its stdout file)."""
    out_path = Path(workdir, "cli.out")
    with open(out_path, "wb") as out:
        cli = subprocess.Popen([sys.executable, "-c", CLI_DRIVER, str(port), token, str(Path(workdir, "cli.pcapng"))],
                               stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO)),
                               cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 60
    while "cli listening" not in out_path.read_text(errors="replace"):
        if cli.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the CLI did not start: {out_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return cli, out_path


def one(lab: Lab, sender: list[str], workdir: str, token_file: Path, iface: str, extra: list[str],
        idle: bool = False, cli: bool = False) -> tuple[float, int, int, float]:
    """(worker CPU seconds, packets sent, bytes streamed, CLI CPU seconds) of one run (``idle``: no
    traffic, the same window; ``cli``: the CLI's capture reads the stream, else a bare reader, CLI CPU 0)."""
    err_path = Path(workdir, "worker.err")
    with open(err_path, "w") as err:
        p = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "kstap", "worker", "--listen", "127.0.0.1:0",
                              "--token-file", str(token_file), "-i", iface, "--netns", lab.server, "--node", "bench",
                              "--linger", "0", "-f", "udp", *extra],
                             stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ, PYTHONPATH=str(REPO)),
                             cwd=REPO, start_new_session=True)
    try:
        deadline, port = time.monotonic() + 120, 0
        while not port:
            text = err_path.read_text(errors="replace")
            m = re.search(r"127\.0\.0\.1:(\d+)", text)
            if m and "capturing on" in text:
                port = int(m.group(1))
            elif p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start: {text[-2000:]}")
            time.sleep(0.05)
        got = [0]
        reader: subprocess.Popen[bytes] | None = None
        if cli:
            reader, cli_out = start_cli(port, token_file.read_text(), workdir)
        else:
            threading.Thread(target=follow, args=(port, token_file.read_text(), got), daemon=True).start()
        time.sleep(0.5)
        cpu0 = cc._cpu_so_far(p.pid)
        cli0 = cc._cpu_so_far(reader.pid) if reader else 0.0
        cfg = cc.Config(rates=[], seconds=SECONDS, rounds=1, flows=FLOWS, payload=18, buffer_mib=32,
                        capture_cpu="0", sender_cpu="1", tail_s=TAIL_S)
        if idle:
            sent = 0
            time.sleep(SECONDS + TAIL_S)
        else:
            sent, _ = cc.send(lab, sender, cfg, str(PPS), SECONDS)
            time.sleep(TAIL_S)
        worker_cpu = cc._cpu_so_far(p.pid) - cpu0
        cli_cpu = cc._cpu_so_far(reader.pid) - cli0 if reader else 0.0
        if reader is not None:
            got[0] = Path(workdir, "cli.pcapng").stat().st_size
            reader.send_signal(signal.SIGTERM)
            if reader.wait(30) != 0:
                raise RuntimeError(f"the CLI failed: {cli_out.read_text(errors='replace')[-2000:]}")
        return worker_cpu, sent, got[0], cli_cpu
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def markers(cli: bool) -> tuple[str, str]:
    """The docs/benchmarks.md markers of this run's section (``--cli`` has its own)."""
    return (MARK.replace("-->", "(cli) -->"), END.replace("-->", "(cli) -->")) if cli else (MARK, END)


def render(results: dict[str, list[tuple[float, int, int, float]]], args: argparse.Namespace) -> str:
    def med(values: Iterable[float]) -> float:
        return statistics.median(values)

    mark, _ = markers(args.cli)
    reader = ("the CLI's capture (`run_remote`, as `kstap tap -n` runs it) reading its stream into a pcapng file"
              if args.cli else "a stream reader attached")
    lines = [mark, "## A node's worker" + (" and the CLI that merges its stream" if args.cli else "")
             + f" (`benchmarks/worker_cost.py{' --cli' if args.cli else ''}`)", "",
             f"`kstap worker -i {args.interface}` with {reader}, {PPS:,} pps of UDP over {FLOWS:,} "
             f"flows for {SECONDS:g} s; medians of {args.rounds} rounds run side by side.", ""]
    if args.cli:
        lines += ["| | µs of worker CPU / offered packet | µs of CLI CPU / offered packet | CLI CPU ms in the window "
                  "| MiB written by the CLI |", "|---|---:|---:|---:|---:|"]
    else:
        lines += ["| | µs of worker CPU / offered packet | CPU ms in the window | MiB streamed |",
                  "|---|---:|---:|---:|"]
    for name, runs in results.items():
        idle = name == IDLE
        worker = "—" if idle else f"{med(c / s * 1e6 for c, s, _, _ in runs):.3f}"
        if args.cli:
            cli = "—" if idle else f"{med(k / s * 1e6 for _, s, _, k in runs):.3f}"
            lines.append(f"| {name} | {worker} | {cli} | {med(k * 1000 for *_, k in runs):.1f} "
                         f"| {med(b / (1 << 20) for _, _, b, _ in runs):.1f} |")
        else:
            lines.append(f"| {name} | {worker} | {med(c * 1000 for c, _, _, _ in runs):.1f} "
                         f"| {med(b / (1 << 20) for _, _, b, _ in runs):.1f} |")
    if IDLE in results:
        lines += ["", f"The idle row: the window ({SECONDS + TAIL_S:g} s) with the reader attached and no packet; "
                  "the worker wakes 4 times a second to move its watermark (the CLI's merge waits on it)."]
    return "\n".join([*lines, ""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--interface", choices=("any", "veth"), default="any")
    ap.add_argument("--modes", default=",".join(MODES), help="a comma-separated subset of: " + ", ".join(MODES))
    ap.add_argument("--cli", action="store_true", help="the CLI's capture reads the stream (its CPU reported too)")
    ap.add_argument("--out", help="update this Markdown file (the section between the worker-cost markers)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 3
    names = [n.strip() for n in args.modes.split(",")]
    results: dict[str, list[tuple[float, int, int, float]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="kstap-worker-") as workdir, Lab() as lab:
        sender, _ = cc.build_sender(workdir, "c")
        token_file = Path(workdir, "token")
        token_file.write_text(secrets.token_hex(16))
        token_file.chmod(0o600)
        iface = "any" if args.interface == "any" else lab.server_if
        for _ in range(args.rounds):
            for name in names:
                results[name].append(one(lab, sender, workdir, token_file, iface, MODES[name], idle=name == IDLE,
                                         cli=args.cli))
    text = render(results, args)
    print(text)
    if args.out:
        mark, end = markers(args.cli)
        cc.write_section(Path(args.out), text + end, mark, end)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
