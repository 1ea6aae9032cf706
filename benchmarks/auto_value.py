"""Auto mode's value test: whole flows while the rate rises, its cost, and what it keeps under a CPU quota.

    .venv/bin/python benchmarks/auto_value.py [--rounds 3] [--out docs/benchmarks.md]
                                              [--only flows,cost,cost-null,quota]

Three parts, each repeated ``--rounds`` times side by side (medians are reported):

flows   20,000 UDP flows x 120 packets, round-robin (benchmarks/udp_blast.c); kstap --mode auto
        starting at --rate 0.1, so the controller (no limit) raises the rate 5 points a second while
        every flow is live. A flow is *complete* when the file has every packet that was sent for it.
cost    200 kpps over 5,000 flows: CPU (user+sys) per offered packet of tcpdump -w, kstap full,
        percentage 10 %, auto at rate 1.0, and full + --entries (UDP to the discard port: nothing
        for a dissector). Right before each window 128 MiB are written and deleted (--condition-mib),
        so every row writes into the same kind of memory whatever row ran before it.
cost-null  the same, every tool writing to /dev/null (``-w /dev/null``): the tools' own CPU. Writing
        a file costs the kernel page-cache memory for every byte; on a VM whose freed memory goes
        back to the host (free page reporting), each new page also costs a fault in the host,
        which moves a round's file-writing cost by 3x (docs/benchmarks.md, "What writing the file
        costs on this VM"). The file's cost grows with its bytes: pcapng's EPB takes 32 bytes per
        packet, pcap's record 16.
quota   the traffic of ``flows``, with the capture process in a cgroup v1 CPU quota (1.5 ms per 100 ms
        unless --quota-us says otherwise) so that tcpdump drops >= 30 %: complete flows and CPU of
        tcpdump, kstap full and kstap auto; auto's settling time and mean rate from its --json events.

Traffic runs only on a veth pair between two network namespaces made here (kstap.demo.lab.Lab),
sender pinned to CPU 1, capture to CPU 0; namespaces, cgroups and processes are removed by name and
PID whatever happens. Needs root, gcc, tcpdump.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import capture_cpu as cc  # noqa: E402

from kstap.demo.lab import Lab  # noqa: E402
from kstap.file_writes import WRITE_SLICE, write_all  # noqa: E402
from tests.privileged.procs import cpu_cgroup  # noqa: E402

BASE_SPORT = 20000
MARK = "<!-- auto-value -->"
END = "<!-- auto-value: end -->"


@dataclass
class Result:
    tool: str
    cpu: float = 0.0
    sent: int = 0
    in_file: int = 0
    flows_in_file: int = 0
    complete: int = 0
    kernel_drops: int = 0
    settle_s: float | None = None
    mean_rate: float | None = None
    events: list[dict[str, object]] = field(default_factory=list)

    @property
    def us_per_offered(self) -> float:
        return self.cpu / self.sent * 1e6 if self.sent else 0.0


# -- pcapng: packets per UDP source port ---------------------------------------------------------

def per_flow(path: str) -> dict[int, int]:
    """UDP source port → packets in the file (Ethernet, IPv4, the sender's ports only)."""
    counts: dict[int, int] = {}
    data = Path(path).read_bytes()
    off, n = 0, len(data)
    u32 = struct.Struct("<II")
    while off + 12 <= n:
        btype, blen = u32.unpack_from(data, off)
        if blen < 12:
            break
        if btype == 6:
            cap = struct.unpack_from("<I", data, off + 20)[0]
            pkt = off + 28
            if cap >= 38 and data[pkt + 12] == 8 and data[pkt + 13] == 0 and data[pkt + 23] == 17:
                ihl = (data[pkt + 14] & 0x0F) * 4
                sport = (data[pkt + 14 + ihl] << 8) | data[pkt + 15 + ihl]
                counts[sport] = counts.get(sport, 0) + 1
        elif btype == 3:  # a Simple Packet Block (tcpdump never writes one)
            pass
        off += blen
    return counts


def pcap_to_pcapng(path: str) -> str:
    """tcpdump writes pcap: convert once with editcap so one reader serves both."""
    out = path + ".pcapng"
    subprocess.run(["editcap", "-F", "pcapng", path, out], check=True, capture_output=True, timeout=600)
    return out


def completeness(path: str, sent: int, flows: int) -> tuple[int, int, int]:
    """(packets in file, flows in file, complete flows) against what the round-robin sender sent."""
    counts = per_flow(path)
    base, extra = divmod(sent, flows)
    complete = 0
    for sport, got in counts.items():
        i = sport - BASE_SPORT
        if 0 <= i < flows and got >= base + (1 if i < extra else 0):
            complete += 1
    return sum(counts.values()), len(counts), complete


# -- cgroup ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def cpu_quota(quota_us: int | None, period_us: int = 100_000) -> Iterator[Path | None]:
    if quota_us is None:
        yield None
        return
    with cpu_cgroup(quota_us, period_us, prefix="kstap-bench-") as path:
        yield path


# -- one capture -----------------------------------------------------------------------------------

ANY = False
"""--interface any: every tool captures ``-i any`` in the server's namespace (a cooked socket, what
kstap's workers run on a node) instead of the veth's end."""


def tool_argv(tool: str, lab: Lab, path: str, extra: Sequence[str], buffer_mib: int = 32) -> list[str]:
    iface = "any" if ANY else lab.server_if
    if tool == "tcpdump":
        return ["nsenter", f"--net=/run/netns/{lab.server}", "tcpdump", "-i", iface, "-w", path,
                "-B", str(buffer_mib * 1024), "udp"]
    return [sys.executable, "-m", "kstap", "tap", "--netns", lab.server, "-i", iface, "-w", path,
            "-B", str(buffer_mib), "-f", "udp", "--no-dashboard", "--json", *extra]


def condition(workdir: str, size: int) -> None:
    """Write ``size`` bytes to a file in 4 KiB writes and delete it: the page cache's memory that the
    next capture writes into is then freshly freed (still backed on a VM with free page reporting)
    whatever ran before. Without it a capture after one that deleted a big file pays less than one
    after a small file (auto after percentage mode: 0.112 against 0.101 us per packet after tcpdump)."""
    path = os.path.join(workdir, "condition.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = bytes(1 << 20)
        for i in range(size >> 20):
            write_all(fd, block, WRITE_SLICE, i << 20)
    finally:
        os.close(fd)
        os.unlink(path)


def capture(lab: Lab, sender: list[str], tool: str, extra: Sequence[str], *, rate: int, seconds: float,
            flows: int, workdir: str, cgroup: Path | None = None, tail_s: float = 1.5,
            buffer_mib: int = 32, sink: str = "file", condition_bytes: int = 0) -> Result:
    """One capture by ``tool`` of ``rate`` pps; ``sink`` "null" writes to /dev/null (no file to count).
    ``condition_bytes``: :func:`condition` right before the measured window (0: not)."""
    name = f"{tool}.{'pcap' if tool == 'tcpdump' else 'pcapng'}"
    path = os.devnull if sink == "null" else os.path.join(workdir, name)
    err = os.path.join(workdir, "err.txt")
    out = os.path.join(workdir, "out.txt")
    argv = ["taskset", "-c", "0", *tool_argv(tool, lab, path, extra, buffer_mib)]
    if cgroup is not None:  # join the cgroup before exec, so every thread is in it from the start
        argv = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(err, "wb") as ef, open(out, "wb") as of:
        p = subprocess.Popen(argv, stdout=of, stderr=ef, start_new_session=True, env=env)
    cc._children.append(p)
    res = Result(tool)
    try:
        deadline = time.monotonic() + 300  # under a small quota, Python's start-up alone takes a while (>120 s seen)
        ready = "listening on"
        while ready not in Path(err).read_text(errors="replace") and '"event":"start"' not in \
                Path(out).read_text(errors="replace"):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{tool} did not start: {Path(err).read_text(errors='replace')[-2000:]}")
            time.sleep(0.02)
        time.sleep(0.3)
        if condition_bytes:
            condition(workdir, condition_bytes)
        cpu0 = cc._cpu_so_far(p.pid)
        cfg = cc.Config(rates=[], seconds=seconds, rounds=1, flows=flows, payload=18, buffer_mib=32,
                        capture_cpu="0", sender_cpu="1", tail_s=tail_s)
        res.sent, _ = cc.send(lab, sender, cfg, str(rate), seconds)
        time.sleep(tail_s)
        res.cpu = cc._cpu_so_far(p.pid) - cpu0
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        cc._forget(p)
    text = Path(err).read_text(errors="replace")
    if tool == "tcpdump":
        _, res.kernel_drops, _ = cc.parse_summary("tcpdump", text)
        readable = path if sink == "null" else pcap_to_pcapng(path)
    else:
        readable = path
        for line in Path(out).read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                res.events.append(ev)
                if ev.get("event") == "summary":
                    res.kernel_drops = int(ev.get("dropped", 0) or 0)
        rates = [(float(e.get("elapsed", 0)), float(e["rate"])) for e in res.events
                 if e.get("event") == "stats" and e.get("rate") is not None]
        if rates:
            res.mean_rate = statistics.fmean(r for _, r in rates)
            res.settle_s = settling(rates)
    if sink == "null":
        return res
    res.in_file, res.flows_in_file, res.complete = completeness(readable, res.sent, flows)
    with contextlib.suppress(OSError):
        os.unlink(path)
        if readable != path:
            os.unlink(readable)
    return res


def settling(rates: list[tuple[float, float]], band: float = 0.05) -> float:
    """Seconds until the rate stays within ±band (relative) of its final value."""
    final = rates[-1][1]
    t = rates[0][0]
    for when, r in rates:
        if abs(r - final) > band * max(final, 1e-9):
            t = when
    return t


# -- the parts -------------------------------------------------------------------------------------

AUTO_RISING = ["--mode", "auto", "--rate", "0.1", "--seed", "7"]


def part_flows(lab: Lab, sender: list[str], rounds: int, workdir: str, args: argparse.Namespace
               ) -> dict[str, list[Result]]:
    out: dict[str, list[Result]] = {"auto (rising from 0.1)": [], "auto, user-space table": []}
    for _ in range(rounds):
        out["auto (rising from 0.1)"].append(capture(lab, sender, "kstap", AUTO_RISING, rate=args.pps,
                                                     seconds=args.seconds, flows=args.flows, workdir=workdir))
        os.environ["KSTAP_SAMPLING_FLOW_TABLE"] = "user"
        try:
            out["auto, user-space table"].append(capture(lab, sender, "kstap", AUTO_RISING, rate=args.pps,
                                                         seconds=args.seconds, flows=args.flows, workdir=workdir))
        finally:
            del os.environ["KSTAP_SAMPLING_FLOW_TABLE"]
    return out


LOW_RATE = "full at 20 kpps"
"""Full mode offered the packets percentage 10 % keeps (a tenth of the rate, 500 flows): what those
packets cost user space on their own, read and written at the rate percentage mode keeps them."""
COST = {"tcpdump -w": ("tcpdump", []), "full": ("kstap", ["--mode", "full"]),
        "percentage 10 %": ("kstap", ["--mode", "percentage", "--rate", "0.1", "--seed", "7"]),
        "auto (rate 1.0)": ("kstap", ["--mode", "auto", "--rate", "1", "--seed", "7"]),
        "full + --entries": ("kstap", ["--mode", "full", "--entries", os.devnull]),
        LOW_RATE: ("kstap", ["--mode", "full"])}
COST_PPS = 200_000


def part_cost(lab: Lab, sender: list[str], rounds: int, workdir: str, args: argparse.Namespace,
              sink: str = "file") -> dict[str, list[Result]]:
    out: dict[str, list[Result]] = {k: [] for k in COST}
    names = list(COST)
    for rnd in range(rounds):
        # each round in another order (and, with a file, --condition-mib before each window): a
        # capture that follows one whose file was just deleted writes into freshly freed (still
        # backed) memory, which costs less on this VM; rotating alone keeps each row's predecessor
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            tool, extra = COST[name]
            low = name == LOW_RATE
            out[name].append(capture(lab, sender, tool, extra, rate=COST_PPS // 10 if low else COST_PPS,
                                     seconds=args.cost_seconds, flows=500 if low else 5000, workdir=workdir,
                                     sink=sink, condition_bytes=args.condition_mib << 20 if sink == "file" else 0))
    return out


def part_cost_null(lab: Lab, sender: list[str], rounds: int, workdir: str, args: argparse.Namespace
                   ) -> dict[str, list[Result]]:
    return part_cost(lab, sender, rounds, workdir, args, sink="null")


def part_quota(lab: Lab, sender: list[str], rounds: int, workdir: str, args: argparse.Namespace
               ) -> dict[str, list[Result]]:
    tools = {"tcpdump": ("tcpdump", []), "kstap full": ("kstap", ["--mode", "full"]),
             "kstap auto": ("kstap", ["--mode", "auto", "--seed", "7"])}
    out: dict[str, list[Result]] = {k: [] for k in tools}
    for _ in range(rounds):
        for name, (tool, extra) in tools.items():
            with cpu_quota(args.quota_us) as cg:
                out[name].append(capture(lab, sender, tool, extra, rate=args.quota_pps, seconds=args.quota_seconds,
                                         flows=args.flows, workdir=workdir, cgroup=cg, tail_s=3.0,
                                         buffer_mib=args.quota_buffer))
    return out


# -- report ----------------------------------------------------------------------------------------

def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def render(results: dict[str, dict[str, list[Result]]], args: argparse.Namespace) -> str:
    title, where = (("## Auto mode's value test on -i any (`benchmarks/auto_value.py --interface any`)",
                     "every tool on -i any in the receiving namespace")
                    if ANY else
                    ("## Auto mode's value test (`make bench-auto`, benchmarks/auto_value.py)", "veth pair"))
    lines = [MARK.replace("-->", "(any) -->") if ANY else MARK, title, "",
             f"Medians of {args.rounds} rounds run side by side; {where}, sender on CPU 1, capture on CPU 0.", ""]
    if "flows" in results:
        lines += ["### Whole flows while the rate rises",
                  f"{args.flows:,} UDP flows, round-robin, {args.pps:,} pps for {args.seconds:g} s; auto starts at "
                  "rate 0.1 with no limit, so the rate rises 5 points a second while every flow is live.", "",
                  "| flow table | flows in file | complete | complete share | rounds (complete share) |",
                  "|---|---:|---:|---:|---|"]
        for name, rs in results["flows"].items():
            shares = [r.complete / r.flows_in_file if r.flows_in_file else 0.0 for r in rs]
            lines.append(f"| {name} | {med([r.flows_in_file for r in rs]):,.0f} | {med([r.complete for r in rs]):,.0f} "
                         f"| {med(shares):.1%} | {', '.join(f'{s:.1%}' for s in shares)} |")
        lines.append("")
    for part, heading in (("cost", "### CPU per offered packet (200 kpps, 5,000 flows)"),
                          ("cost-null", "### CPU per offered packet, writing to /dev/null (200 kpps, 5,000 flows)")):
        if part not in results:
            continue
        costs = results[part]
        full = med([r.us_per_offered for r in costs["full"]])
        lines += [heading, "",
                  "| | " + " | ".join(costs) + " |", "|---|" + "---:|" * len(costs),
                  "| µs / offered packet | " + " | ".join(f"{med([r.us_per_offered for r in v]):.3f}"
                                                       for v in costs.values()) + " |",
                  "| x full | " + " | ".join(f"{med([r.us_per_offered for r in v]) / full:.2f}" for v in costs.values())
                  + " |",
                  "| CPU ms in the window | "
                  + " | ".join(f"{med([r.cpu * 1000 for r in v]):.1f}" for v in costs.values()) + " |",
                  "| rounds (µs) | "
                  + " | ".join(", ".join(f"{r.us_per_offered:.3f}" for r in v) for v in costs.values()) + " |", "",
                  f"{LOW_RATE}: full mode offered a tenth of the traffic (500 flows), i.e. the packets percentage "
                  "10 % keeps, at the rate it keeps them; its µs are per packet it was offered.", ""]
    if "quota" in results:
        rs = results["quota"]
        lines += [f"### Under a CPU quota ({args.quota_us / 1000:g} ms per 100 ms)",
                  f"{args.flows:,} UDP flows, {args.quota_pps:,} pps for {args.quota_seconds:g} s; every tool "
                  f"with a {args.quota_buffer} MiB ring (tcpdump's default).", "",
                  "| | kernel drops / sent | flows in file | complete flows | complete / all flows "
                  "| complete / flows in file | CPU s | settling s | mean rate |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, v in rs.items():
            settle = [r.settle_s for r in v if r.settle_s is not None]
            rate = [r.mean_rate for r in v if r.mean_rate is not None]
            lines.append(
                f"| {name} | {med([r.kernel_drops / r.sent for r in v if r.sent]):.0%} "
                f"| {med([r.flows_in_file for r in v]):,.0f} | {med([r.complete for r in v]):,.0f} "
                f"| {med([r.complete / args.flows for r in v]):.1%} "
                f"| {med([r.complete / r.flows_in_file if r.flows_in_file else 0 for r in v]):.1%} "
                f"| {med([r.cpu for r in v]):.2f} | {f'{med(settle):.0f}' if settle else '-'} "
                f"| {f'{med(rate):.3f}' if rate else '-'} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="flows,cost,quota")
    ap.add_argument("--flows", type=int, default=20000)
    ap.add_argument("--pps", type=int, default=600_000)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--cost-seconds", type=float, default=5.0)
    ap.add_argument("--condition-mib", type=int, default=128,
                    help="cost part, -w a file: write and delete this much right before each window, so "
                    "every tool writes into the same kind of memory whatever ran before (0: off)")
    ap.add_argument("--quota-us", type=int, default=1500,
                    help="CPU quota per 100 ms period; 1.5 ms makes tcpdump drop >= 30 %% here")
    ap.add_argument("--quota-pps", type=int, default=600_000)
    ap.add_argument("--quota-seconds", type=float, default=6.0)
    ap.add_argument("--quota-buffer", type=int, default=2, help="ring MiB of every tool in the quota part "
                    "(tcpdump's default -B is 2 MiB)")
    ap.add_argument("--interface", choices=("veth", "any"), default="veth",
                    help="capture on the veth's end (default) or on -i any, the cooked socket of a node")
    ap.add_argument("--out", help="update this Markdown file (the section after the auto-value marker)")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, cgroups)", file=sys.stderr)
        return 3
    global ANY
    ANY = args.interface == "any"
    mark, end = (MARK.replace("-->", "(any) -->"), END.replace("-->", "(any) -->")) if ANY else (MARK, END)
    parts = {"flows": part_flows, "cost": part_cost, "cost-null": part_cost_null, "quota": part_quota}
    results: dict[str, dict[str, list[Result]]] = {}
    with tempfile.TemporaryDirectory(prefix="kstap-auto-") as workdir, Lab() as lab:
        sender, _ = cc.build_sender(workdir, "c")
        for name in args.only.split(","):
            results[name] = parts[name](lab, sender, args.rounds, workdir, args)
            print(render({name: results[name]}, args), flush=True)
    text = render(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps({p: {k: [vars(r) | {"events": []} for r in v] for k, v in d.items()}
                                               for p, d in results.items()}, indent=1))
    if args.out:  # the section between the markers (appended when absent); the rest of the file stays
        cc.write_section(Path(args.out), text + "\n" + end, mark, end)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
