"""What a node's worker costs: CPU of ``kstap worker`` per offered packet, with a stream reader attached.

    .venv/bin/python benchmarks/worker_cost.py [--rounds 3] [--interface any|veth] [--out docs/benchmarks.md]

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


def one(lab: Lab, sender: list[str], workdir: str, token_file: Path, iface: str, extra: list[str],
        idle: bool = False) -> tuple[float, int, int]:
    """(worker CPU seconds, packets sent, bytes streamed) of one run (``idle``: no traffic, the same window)."""
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
        threading.Thread(target=follow, args=(port, token_file.read_text(), got), daemon=True).start()
        time.sleep(0.5)
        cpu0 = cc._cpu_so_far(p.pid)
        cfg = cc.Config(rates=[], seconds=SECONDS, rounds=1, flows=FLOWS, payload=18, buffer_mib=32,
                        capture_cpu="0", sender_cpu="1", tail_s=TAIL_S)
        if idle:
            sent = 0
            time.sleep(SECONDS + TAIL_S)
        else:
            sent, _ = cc.send(lab, sender, cfg, str(PPS), SECONDS)
            time.sleep(TAIL_S)
        return cc._cpu_so_far(p.pid) - cpu0, sent, got[0]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def render(results: dict[str, list[tuple[float, int, int]]], args: argparse.Namespace) -> str:
    lines = [MARK, "## A node's worker (`benchmarks/worker_cost.py`)", "",
             f"`kstap worker -i {args.interface}` with a stream reader attached, {PPS:,} pps of UDP over {FLOWS:,} "
             f"flows for {SECONDS:g} s; medians of {args.rounds} rounds run side by side.", "",
             "| | µs of worker CPU / offered packet | CPU ms in the window | MiB streamed |",
             "|---|---:|---:|---:|"]
    for name, runs in results.items():
        per_packet = "—" if name == IDLE else f"{statistics.median(c / s * 1e6 for c, s, _ in runs):.3f}"
        lines.append(f"| {name} | {per_packet} "
                     f"| {statistics.median(c * 1000 for c, _, _ in runs):.1f} "
                     f"| {statistics.median(b / (1 << 20) for _, _, b in runs):.1f} |")
    if IDLE in results:
        lines += ["", f"The idle row: the window ({SECONDS + TAIL_S:g} s) with the reader attached and no packet; "
                  "the worker wakes 4 times a second to move its watermark (the CLI's merge waits on it)."]
    return "\n".join([*lines, ""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--interface", choices=("any", "veth"), default="any")
    ap.add_argument("--modes", default=",".join(MODES), help="a comma-separated subset of: " + ", ".join(MODES))
    ap.add_argument("--out", help="update this Markdown file (the section between the worker-cost markers)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 3
    names = [n.strip() for n in args.modes.split(",")]
    results: dict[str, list[tuple[float, int, int]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="kstap-worker-") as workdir, Lab() as lab:
        sender, _ = cc.build_sender(workdir, "c")
        token_file = Path(workdir, "token")
        token_file.write_text(secrets.token_hex(16))
        token_file.chmod(0o600)
        iface = "any" if args.interface == "any" else lab.server_if
        for _ in range(args.rounds):
            for name in names:
                results[name].append(one(lab, sender, workdir, token_file, iface, MODES[name], idle=name == IDLE))
    text = render(results, args)
    print(text)
    if args.out:
        cc.write_section(Path(args.out), text + END, MARK, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
