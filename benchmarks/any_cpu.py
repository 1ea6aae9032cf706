"""CPU per packet of a node capture: ``-i any`` with dedup vs pod-aware points vs per-interface vs tcpdump.

A :class:`kstap.demo.node.NodeLab` (bridge layout, four pods) carries the same UDP traffic for every
configuration: pod 2 → pod 1 and pod 3 → pod 4, 64-byte datagrams from 64 source ports, at a fixed
rate per pair (``benchmarks/udp_blast.c``, raw socket + sendmmsg, from each pod's namespace). Every
datagram crosses two veths of the node (the sender's and the receiver's), so ``-i any`` sees each
twice. Capture runs in the node namespace, one configuration after the other, rounds rotated:

- ``kstap -i any`` (cooked socket, copies removed: the default);
- ``kstap -i any --dedup-window 0`` (every copy kept, as tcpdump -i any);
- ``kstap -i any -f 'host POD1'`` (any + a filter for one target pod);
- ``kstap -i VETH1`` (pod-aware capture point: only the target pod's host-side veth, which is
  what a capture restricted to the target pods opens; the same packets as the line above);
- ``kstap -i VETH1 -i VETH2 -i VETH3 -i VETH4`` (per-interface capture of every pod veth);
- ``tcpdump -i any``.

Per configuration: CPU seconds (user+sys) of the capture process while the traffic ran, packets
written (capinfos), and CPU per datagram sent and per packet written. Medians over the rounds go
into a section of docs/benchmarks.md (between markers, so the rest of the file stays as
``benchmarks/capture_cpu.py`` wrote it).

    python benchmarks/any_cpu.py --out docs/benchmarks.md            # 3 rounds, 8000 pps per pair, 4 s
    python benchmarks/any_cpu.py --rounds 1 --seconds 2 --out /tmp/any.md

Needs root, iproute2, tcpdump, capinfos and gcc. Everything stays inside the lab's namespaces and
is removed by name and PID.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from capture_cpu import _cpu_so_far, build_sender, machine_info, write_section  # noqa: E402

from kstap.demo.node import NodeLab  # noqa: E402

BEGIN = "<!-- benchmarks/any_cpu.py: begin -->"
END = "<!-- benchmarks/any_cpu.py: end -->"
DPORT = 9


@dataclass
class Result:
    config: str
    cpu_s: float
    sent: int
    written: int

    @property
    def us_per_sent(self) -> float:
        return self.cpu_s / self.sent * 1e6 if self.sent else 0.0

    @property
    def us_per_written(self) -> float:
        return self.cpu_s / self.written * 1e6 if self.written else 0.0


def configs(lab: NodeLab) -> dict[str, list[str]]:
    veths = [lab.pods[i].host_if for i in sorted(lab.pods)]
    kstap = [sys.executable, "-m", "kstap", "tap", "--netns", lab.node, "-f", "udp"]
    return {
        "kstap -i any (dedup)": [*kstap, "-i", "any"],
        "kstap -i any --dedup-window 0": [*kstap, "-i", "any", "--dedup-window", "0"],
        "kstap -i any -f 'host POD1'": [*kstap[:-2], "-f", f"udp and host {lab.pods[1].ip}", "-i", "any"],
        "kstap -i VETH1 (pod-aware point)": [*kstap, "-i", veths[0]],
        "kstap -i VETH1..4 (per-interface)": [*kstap, *[a for v in veths for a in ("-i", v)]],
        "tcpdump -i any": ["nsenter", f"--net=/run/netns/{lab.node}", "tcpdump", "-i", "any", "-Z", "root",
                           "-B", str(32 << 10), "udp"],
    }


def count(path: str) -> int:
    r = subprocess.run(["capinfos", "-c", "-M", path], capture_output=True, text=True, timeout=60)
    m = re.search(r"Number of packets:\s+(\d+)", r.stdout)
    return int(m.group(1)) if m else 0


def run_one(lab: NodeLab, name: str, argv: list[str], sender: list[str], rate: int, seconds: float,
            tmp: str) -> Result:
    out = os.path.join(tmp, "cap.pcapng")
    if os.path.exists(out):
        os.unlink(out)
    argv = [*argv[:-1], "-w", out, argv[-1]] if argv[0] == "nsenter" else [*argv, "-w", out]  # tcpdump: filter last
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
    try:
        assert p.stderr is not None
        deadline = time.monotonic() + 20
        seen = b""
        while b"listening on" not in seen:
            line = p.stderr.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {seen.decode(errors='replace')}")
            seen += line
        time.sleep(0.5)
        before = _cpu_so_far(p.pid)
        senders = []
        for src, dst in ((2, 1), (3, 4)):
            senders.append(subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{lab.pods[src].ns}", *sender, lab.pods[src].ip, lab.pods[dst].ip,
                 str(rate), f"{seconds:g}", "64", "64", str(DPORT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        sent = 0
        for s in senders:
            o, _ = s.communicate(timeout=seconds + 30)
            m = re.search(rb"sent (\d+)", o)
            sent += int(m.group(1)) if m else 0
        time.sleep(0.8)  # the last blocks are retired and written
        cpu = _cpu_so_far(p.pid) - before
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    return Result(name, cpu, sent, count(out))


def render(results: dict[str, list[Result]], rate: int, seconds: float, rounds: int, sender: str) -> str:
    m = machine_info()
    lines = [BEGIN, "", "## A node capture: `-i any` with dedup, pod-aware points, per-interface, tcpdump -i any", "",
             "Generated by `benchmarks/any_cpu.py`; re-run it rather than editing by hand.", "",
             f"Bridge-layout node namespace, four pods; pod 2 → pod 1 and pod 3 → pod 4 at {rate} datagrams/s each "
             f"for {seconds:g} s (64-byte UDP, 64 flows per pair; {sender}). Each datagram crosses two veths. "
             f"Medians of {rounds} round(s), configurations rotated. CPU = user+sys of the capture process "
             "while the traffic ran. Machine: "
             f"{m.get('nproc', '?')} CPUs, {m.get('cpu', '?')}, kernel {m.get('kernel', '?')}; load from other "
             "work on this shared machine makes single figures noisy: compare the ratios.", "",
             "| configuration | datagrams sent | packets written | CPU s | µs CPU / datagram sent | "
             "µs CPU / packet written | vs tcpdump -i any (per datagram) |",
             "|---|---|---|---|---|---|---|"]
    base = statistics.median(r.us_per_sent for r in results["tcpdump -i any"]) or 1.0
    for name, rs in results.items():
        sent = int(statistics.median(r.sent for r in rs))
        written = int(statistics.median(r.written for r in rs))
        cpu = statistics.median(r.cpu_s for r in rs)
        per_sent = statistics.median(r.us_per_sent for r in rs)
        per_written = statistics.median(r.us_per_written for r in rs)
        lines.append(f"| {name} | {sent} | {written} | {cpu:.2f} | {per_sent:.2f} | {per_written:.2f} | "
                     f"{per_sent / base:.2f}x |")
    lines += ["", "Reading it: `-i any` writes each datagram once (copies removed) where `--dedup-window 0` and "
              "tcpdump write it twice; the pod-aware point and `any` + a host filter write the same packets (one "
              "target pod's traffic), the first without the other pods' packets ever reaching the socket.", "",
              END, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--rate", type=int, default=8000, help="datagrams/s per pod pair")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    results: dict[str, list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="kstap-any-bench-") as tmp, NodeLab("bridge") as lab:
        sender, what = build_sender(tmp, "c")
        for i in (1, 2, 3, 4):
            lab.add_pod(i)
        table = configs(lab)
        names = list(table)
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[: rnd % len(names)]
            for name in order:
                r = run_one(lab, name, table[name], sender, args.rate, args.seconds, tmp)
                print(f"round {rnd + 1} {name}: {r.cpu_s:.2f} s CPU, {r.sent} sent, {r.written} written, "
                      f"{r.us_per_sent:.2f} us/datagram", file=sys.stderr)
                results.setdefault(name, []).append(r)
    section = render({n: results[n] for n in names}, args.rate, args.seconds, args.rounds, what)
    out = Path(args.out)
    write_section(out, section, BEGIN, END)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
