"""HTTP/1 dissection throughput: ``kstap dissect`` vs tshark, transactions per CPU-second, one file.

Issue 15's goal: after the fidelity fixes (bare-LF heads, resynchronisation, the DNS decoder) kstap
still dissects HTTP/1 at ≥ 2x tshark's transactions per CPU-second.

    .venv/bin/python benchmarks/dissect_vs_tshark.py [--conns 8] [--requests 1500] [--rounds 5] [--out FILE]
    .venv/bin/python benchmarks/dissect_vs_tshark.py --pcap FILE     # any capture with HTTP/1 in it

Without ``--pcap`` (needs root): curl against Python's ``http.server`` (keep-alive, the corpus test's
server) in two network namespaces made here, CONNS connections of REQUESTS requests each, captured
by tcpdump. Both tools then read the same file, alternately, ROUNDS times:

- kstap: ``python -m kstap dissect FILE`` (entries to /dev/null);
- tshark: ``tshark -n -r FILE -Y http.response -T fields -e http.response.code`` (to /dev/null): its
  HTTP dissector with TCP reassembly, which is what pairs requests with responses.

CPU = user+sys of the child (``os.wait4``), process start included for both. kstap's modules are
byte-compiled first (``compileall``), as installing it with pip does: without that, a checkout run
with PYTHONDONTWRITEBYTECODE=1 compiles every module again at each start (~0.04 s here). Transactions = the
HTTP responses tshark finds in the file (the same number for both tools). The median of the rounds
is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

PORT = 8080


def cpu_of(argv: list[str]) -> float:
    """User+sys CPU seconds of running ``argv`` to its end (stdout discarded)."""
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{argv[0]} failed with {p.returncode}")
    return usage.ru_utime + usage.ru_stime


def record(path: Path, conns: int, requests: int, body: int = 0) -> None:
    """Real HTTP/1 keep-alive traffic between two namespaces, captured by tcpdump into ``path``."""
    from kstap.demo.lab import Lab
    from tests.privileged.corpus import HTTP1_SERVER

    with Lab(subnet=199) as lab:
        server = lab.spawn(lab.server, [sys.executable, "-c", HTTP1_SERVER, lab.server_ip, str(PORT), "600"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert server.stdout is not None and server.stdout.readline().strip() == b"READY"
        dump = lab.spawn(lab.server, ["tcpdump", "-i", lab.server_if, "-w", str(path), "-B", "65536", "-U",
                                      "-Z", "root", f"tcp port {PORT}"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        clients = [lab.spawn(lab.client, ["curl", "-s", "-o", "/dev/null", "--rate", "300/s",
                                          f"http://{lab.server_ip}:{PORT}/blob/{body}?[1-{requests}]" if body
                                          else f"http://{lab.server_ip}:{PORT}/item/[1-{requests}]"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(conns)]
        for c in clients:
            c.wait(timeout=600)
        time.sleep(1.0)
        dump.terminate()
        dump.wait(timeout=10)


def transactions(path: Path) -> int:
    r = subprocess.run(["tshark", "-n", "-r", str(path), "-Y", "http.response", "-T", "fields", "-e",
                        "frame.number"], capture_output=True, text=True, timeout=600, check=True)
    return len(r.stdout.splitlines())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--pcap", type=Path, help="dissect this capture instead of recording one (no root needed)")
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, help="write the Markdown here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.pcap
        if path is None:
            path = Path(tmp) / "http1.pcap"
            record(path, args.conns, args.requests)
        tx = transactions(path)
        # kstap as installed: `pip install` byte-compiles its modules; a source checkout under
        # PYTHONDONTWRITEBYTECODE=1 (this machine's shells) would otherwise recompile them at every start
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "kstap")], check=True,
                       stdout=subprocess.DEVNULL)
        kstap_argv = [sys.executable, "-m", "kstap", "dissect", str(path)]
        tshark_argv = ["tshark", "-n", "-r", str(path), "-Y", "http.response", "-T", "fields", "-e",
                       "http.response.code"]
        tiny = Path(tmp) / "tiny.pcap"  # the same file's first 10 packets: what starting a tool costs
        subprocess.run(["editcap", "-r", str(path), str(tiny), "1-10"], check=True, capture_output=True)
        ours, theirs, ours0, theirs0 = [], [], [], []
        for _ in range(args.rounds):  # alternate, so both see the same machine load
            ours.append(cpu_of(kstap_argv))
            theirs.append(cpu_of(tshark_argv))
            ours0.append(cpu_of([*kstap_argv[:-1], str(tiny)]))
            theirs0.append(cpu_of([*tshark_argv[:3], str(tiny), *tshark_argv[4:]]))
        packets = subprocess.run(["capinfos", "-c", "-M", "-T", "-r", str(path)], capture_output=True, text=True,
                                 check=True).stdout.split("\t")[-1].strip()
    k, t = statistics.median(ours), statistics.median(theirs)
    k0, t0 = statistics.median(ours0), statistics.median(theirs0)
    lines = [
        f"HTTP/1 dissection, {tx:,} transactions ({packets} packets), median of {args.rounds} rounds, "
        f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}:",
        "",
        "| tool | CPU seconds | transactions per CPU-second |",
        "|---|---:|---:|",
        f"| kstap dissect | {k:.2f} | {tx / k:,.0f} |",
        f"| tshark (http, TCP reassembly) | {t:.2f} | {tx / t:,.0f} |",
        f"| kstap, start-up excluded ({k0:.2f} s) | {k - k0:.2f} | {tx / (k - k0):,.0f} |",
        f"| tshark, start-up excluded ({t0:.2f} s) | {t - t0:.2f} | {tx / (t - t0):,.0f} |",
        "",
        f"kstap / tshark: **{t / k:.2f}x** transactions per CPU-second with start-up, "
        f"**{(t - t0) / (k - k0):.2f}x** without (a running `kstap tap --entries` starts once; goal ≥ 2x). "
        f"Rounds: kstap {', '.join(f'{x:.2f}' for x in ours)}; tshark {', '.join(f'{x:.2f}' for x in theirs)}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
