"""kube-apiserver's CPU per captured MB, by data path, on the cluster of `make cluster` (root).

For each path, `kstap tap -n kstap-e2e-shop` runs while a client pod downloads a file from a server pod on
the other node (bounded: COUNT downloads of SIZE MiB, over the harness's own bridge); the API server's CPU
time (utime + stime of its process, /proc/PID/stat) from the capture's start to kstap's exit, less what it
spends idle over as long right after, is divided by the capture's size:

- ``proxy``: the CLI on the host, every worker stream through the API server's pod proxy, unbounded
  (``--api-budget 0``: the data path before this change);
- ``proxy, 8 MB/s``: the same with the default ``--api-budget``;
- ``direct``: the CLI inside the control plane's namespace (where the nodes' addresses are routable, as on a
  bastion or in a pod), ``--data-path direct`` to the workers' addresses: the API server carries no capture.

    .venv/bin/python benchmarks/apiserver_cpu.py [--size 32] [--count 3] [--out docs/kubernetes-apiserver.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "cluster"))
import e2e  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def apiserver_cpu() -> float:
    pid = json.loads(Path("/run/kstap-e2e/state.json").read_text())["pids"]["kube-apiserver"]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def measure(label: str, args: list[str], apps: e2e.Apps, size: int, count: int, netns: str | None,
            kubeconfig: str) -> dict[str, object]:
    url = f"http://{apps.ip('http-2')}:8080/tmp/big"

    def traffic() -> None:
        e2e.exec_in("client-1", f"for i in $(seq {count}); do curl -s -o /dev/null -m 60 {url}; done", timeout=300)

    tmp = Path(tempfile.mkdtemp(prefix="kstap-bench."))
    cmd = [sys.executable, "-m", "kstap", "tap", "-n", e2e.APP_NS, *args, "-w", str(tmp / "f.pcapng"), "--json",
           "--duration", "25"]
    if netns:
        cmd = ["nsenter", f"--net=/run/netns/{netns}", "--", *cmd]
    env = e2e.kstap_env(kubeconfig)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)
    assert proc.stdout is not None
    started = None
    for line in proc.stdout:
        if '"event": "start"' in line or '"event":"start"' in line:
            started = time.monotonic()
            c_start = apiserver_cpu()
            traffic()
    proc.wait(timeout=120)
    c_end, t_end = apiserver_cpu(), time.monotonic()  # the streams drain until kstap exits
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0 and started is not None, err
    captured = (tmp / "f.pcapng").stat().st_size / 1e6
    window = t_end - started
    # what the API server spends with no capture over as long (leases, node status, the watch)
    idle0 = apiserver_cpu()
    time.sleep(window)
    idle = apiserver_cpu() - idle0
    busy = c_end - c_start - idle
    gaps = err.count("lost in transit")
    return {"path": label, "captured_mb": round(captured, 1), "seconds": round(window, 1),
            "apiserver_cpu_s": round(c_end - c_start, 2), "idle_cpu_s": round(idle, 2),
            "ms_per_mb": round(1000 * max(busy, 0.0) / captured, 1) if captured else None,
            "mb_per_s": round(captured / window, 1), "gap_alerts": gaps, "run_s": round(time.monotonic() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=32, help="MiB per download")
    ap.add_argument("--count", type=int, default=3, help="downloads per run")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    apps = e2e.Apps(e2e.ensure_pods(e2e.APP_NS, e2e.app_pods()))
    e2e.exec_in("http-2", f"test -s /tmp/big || head -c {a.size}M /dev/urandom > /tmp/big")
    host, inside = e2e.KUBECONFIG, str(Path(e2e.KUBECONFIG).with_name("kubeconfig-cp"))
    runs = []
    for _ in range(a.repeat):
        runs.append(measure("proxy (unbounded)", ["--data-path", "proxy", "--api-budget", "0"], apps, a.size,
                            a.count, None, host))
        runs.append(measure("proxy, --api-budget 8M", ["--data-path", "proxy"], apps, a.size, a.count, None, host))
        runs.append(measure("direct (CLI where the nodes route)", ["--data-path", "direct"], apps, a.size, a.count,
                            "kstapc-cp", inside))
    for r in runs:
        print(json.dumps(r))
    if a.out:
        by: dict[str, list[dict[str, object]]] = {}
        for r in runs:
            by.setdefault(str(r["path"]), []).append(r)
        lines = ["| data path | captured MB | MB/s | API server CPU s (idle part) | API server ms per captured MB |",
                 "|---|---:|---:|---:|---:|"]
        for path, rs in by.items():
            med = statistics.median(float(r["ms_per_mb"] or 0) for r in rs)  # type: ignore[arg-type]
            r0 = rs[len(rs) // 2]
            lines.append(f"| {path} | {r0['captured_mb']} | {r0['mb_per_s']} | {r0['apiserver_cpu_s']} "
                         f"({r0['idle_cpu_s']}) | {med:g} |")
        Path(a.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
