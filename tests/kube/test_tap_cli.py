"""``kstap tap`` with pod targets, through the real CLI, against the fake API server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "kube" / "dry_run.txt"


def kstap(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kstap", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_tap_dry_run_prints_the_golden_plan(kubeconfig: Path) -> None:
    r = kstap("tap", "-n", "a", "-n", "b", "-n", "kube-system", "--bpf-filter", "tcp port 80 or udp port 53",
              "--dry-run", "--kubeconfig", str(kubeconfig))
    assert r.returncode == 0, r.stderr
    assert r.stdout == GOLDEN.read_text()


def test_pod_targets_and_interfaces_conflict(kubeconfig: Path) -> None:
    r = kstap("tap", "-n", "a", "-i", "lo", "--kubeconfig", str(kubeconfig))
    assert r.returncode == 2
    assert r.stderr.startswith("kstap: error: -i and pod targets")


def test_unreachable_cluster_is_exit_3(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    r = kstap("tap", "-n", "a", "--dry-run", "--kubeconfig", str(config))
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("kstap: error:") and lines[1].startswith("hint:")
    assert "Traceback" not in r.stderr
