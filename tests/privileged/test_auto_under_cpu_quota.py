"""Auto mode under a real CPU quota: drops stop after settling, while full mode keeps dropping.

kstap runs in a cgroup v1 cpu cgroup with a quota of QUOTA cores and dissects what it keeps
(--entries), which costs microseconds per packet in Python. The traffic is a steady UDP blast to port 53
(so every datagram goes to the DNS dissector; C hands Python nothing else) from
many source ports (C sender, pinned to the other core) — more than QUOTA cores can dissect.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kstap.demo.lab import Lab
from tests.privileged.procs import cpu_cgroup

CPU = Path("/sys/fs/cgroup/cpu")
REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroups, network namespaces)"),
    pytest.mark.skipif(not (CPU / "cpu.cfs_quota_us").exists(), reason="no cgroup v1 cpu controller"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="the line-rate sender is compiled with gcc"),
]

QUOTA = 0.10
RATE = 100000
SECONDS = 24
"""Long enough that the second half starts well after settling: the controller needs two or three
halvings (2 s apart) under this quota, which at 16 s ran into the second half in about 1 run of 4."""


def run(mode: str, sender: str, tmp: Path) -> list[dict[str, object]]:
    """NDJSON stats events of one capture under the quota."""
    with Lab() as lab, cpu_cgroup(int(QUOTA * 100_000)) as cg:
        cmd = [sys.executable, "-m", "kstap", "tap", "--netns", lab.server, "-i", lab.server_if, "-f", "udp",
               "-B", "4", "--json", "--entries", str(tmp / f"{mode}.ndjson"), "-w", str(tmp / f"{mode}.pcapng"),
               "--duration", str(SECONDS), "--mode", mode, "--rate", "100%"]
        wrapper = f'echo $$ > {cg / "cgroup.procs"} && exec taskset -c 0 "$@"'
        tap = subprocess.Popen(["sh", "-c", wrapper, "sh", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        lab.procs.append(tap)  # type: ignore[arg-type]
        assert tap.stdout is not None
        first = json.loads(tap.stdout.readline())
        assert first["event"] == "start"
        blast = lab.spawn(lab.client, ["taskset", "-c", "1", sender, lab.client_ip, lab.server_ip, str(RATE),
                                       str(SECONDS - 1), "20000", "64", "53"], stdout=subprocess.DEVNULL)
        out, err = tap.communicate(timeout=120)
        blast.wait(timeout=30)
        assert tap.returncode == 0, err
        return [json.loads(line) for line in out.splitlines()]


def test_auto_mode_stops_dropping_under_a_cpu_quota_full_mode_does_not() -> None:
    with tempfile.TemporaryDirectory() as work:
        sender = os.path.join(work, "udp_blast")
        subprocess.run(["gcc", "-O2", "-o", sender, str(REPO / "benchmarks" / "udp_blast.c")], check=True,
                       capture_output=True, timeout=120)
        tmp = Path(work)
        full = run("full", sender, tmp)
        auto = run("auto", sender, tmp)

    def drops_after(events: list[dict[str, object]], t: float) -> tuple[int, int]:
        stats = [e for e in events if e["event"] == "stats"]
        late = [e for e in stats if float(e["elapsed"]) >= t]  # type: ignore[arg-type]
        assert late, stats
        end = events[-1]
        start_drops = int(late[0]["dropped"])  # type: ignore[call-overload]
        return int(end["dropped"]) - start_drops, int(end["received"])  # type: ignore[call-overload]

    full_late, _ = drops_after(full, SECONDS / 2)
    auto_late, _ = drops_after(auto, SECONDS / 2)
    rates = [float(e["rate"]) for e in auto if e["event"] == "stats"]  # type: ignore[arg-type]
    print(json.dumps({"full_drops_second_half": full_late, "auto_drops_second_half": auto_late,
                      "auto_final_rate": rates[-1], "full_total_drops": full[-1]["dropped"],
                      "auto_total_drops": auto[-1]["dropped"]}))
    assert full_late > 1000, "full mode must drop under this quota, or the test shows nothing"
    assert min(rates) < 1.0, "the controller never lowered the rate"
    assert auto_late <= max(100, full_late // 50), (auto_late, full_late)
