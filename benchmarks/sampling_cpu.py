"""CPU per offered packet: kstap at --mode percentage --rate 0.1 vs --mode full, same traffic.

Issue 4's goal: at rate 0.1 the capture process spends ≤ 0.2x the CPU per offered packet it spends
in full mode, because the kernel filter drops unsampled flows before they are copied.

    .venv/bin/python benchmarks/sampling_cpu.py [--rate 100000] [--seconds 5] [--rounds 3] [--flows 40000]

Traffic: 64-byte UDP from FLOWS source ports (one flow each) through a veth pair between two
network namespaces made here (kstap.demo.lab.Lab); sender pinned to CPU 1, capture to CPU 0.
CPU = user+sys of the kstap process from "listening" to SIGINT (startup excluded).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import capture_cpu as cc  # noqa: E402

from kstap.demo.lab import Lab  # noqa: E402

MODES = {"full": ["--mode", "full"], "rate 0.1": ["--mode", "percentage", "--rate", "0.1", "--seed", "7"]}


def one(lab: Lab, sender: list[str], cfg: cc.Config, mode: str, rate: str, workdir: str) -> tuple[float, int, int]:
    """(CPU seconds, packets sent, packets captured) for one step."""
    out = os.path.join(workdir, "cap.pcapng")
    err = os.path.join(workdir, "err.txt")
    argv = ["taskset", "-c", cfg.capture_cpu, sys.executable, "-m", "kstap", "tap", "--netns", lab.server, "-i",
            lab.server_if, "-w", out, "-B", str(cfg.buffer_mib), "-f", "udp", "--no-dashboard", *MODES[mode]]
    with open(err, "wb") as ef:
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=ef, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in Path(err).read_text(errors="replace"):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(Path(err).read_text(errors="replace"))
            time.sleep(0.02)
        time.sleep(0.3)
        cpu0 = cc._cpu_so_far(p.pid)
        sent, _ = cc.send(lab, sender, cfg, rate, cfg.seconds)
        time.sleep(cfg.tail_s)
        cpu = cc._cpu_so_far(p.pid) - cpu0
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)
        text = Path(err).read_text(errors="replace")
        if "dropped by kernel" not in text:
            raise RuntimeError(f"kstap failed: {text[-2000:]}")
        captured, _, _ = cc.parse_summary("kstap", text)
        return cpu, sent, captured
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", default="100000", help="offered packets/s ('max' = as fast as possible)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flows", type=int, default=40000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 3
    cfg = cc.Config(rates=[args.rate], seconds=args.seconds, rounds=args.rounds, flows=args.flows, payload=64,
                    buffer_mib=32, capture_cpu="0", sender_cpu="1", tail_s=1.0)
    results: dict[str, list[float]] = {m: [] for m in MODES}
    kept: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as workdir, Lab() as lab:
        sender, kind = cc.build_sender(workdir, "auto")
        for rnd in range(args.rounds):
            for mode in MODES:
                cpu, sent, captured = one(lab, sender, cfg, mode, args.rate, workdir)
                results[mode].append(cpu / max(sent, 1) * 1e6)
                kept[mode].append(captured / max(sent, 1))
                print(f"round {rnd + 1} {mode:9s} sent {sent:>9,} captured {captured:>9,} "
                      f"cpu {cpu:.3f}s  {results[mode][-1]:.3f} us/offered packet", flush=True)
    full = statistics.median(results["full"])
    low = statistics.median(results["rate 0.1"])
    paired = [lo / fu for lo, fu in zip(results["rate 0.1"], results["full"], strict=True)]
    print(f"\nsender: {kind}; offered rate {args.rate} pps, {args.flows} flows, "
          f"{args.rounds} rounds of {args.seconds} s")
    print("| mode | CPU µs per offered packet (median) | share of packets kept |")
    print("|---|---:|---:|")
    for mode in MODES:
        print(f"| {mode} | {statistics.median(results[mode]):.3f} | {statistics.median(kept[mode]):.3f} |")
    print(f"\nratio rate 0.1 / full, per round (side by side): {' '.join(f'{r:.2f}' for r in paired)}")
    print(f"median of the per-round ratios: {statistics.median(paired):.2f}; ratio of the medians: "
          f"{low / full:.2f} (goal ≤ 0.20)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
