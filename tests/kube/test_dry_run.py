"""``kstap tap … --dry-run`` output: the targeted pods and each node's compiled filter.

Compared with tests/golden/kube/dry_run.txt; after an intended change regenerate it with
``REGEN_GOLDEN=1 pytest tests/kube/test_dry_run.py`` (or ``make golden``) and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

from kstap.cli.kube_cmds import dry_run, selection_from_flags
from kstap.filters.bpf import compile_filter
from kstap.kube.targets import TargetSelection

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "kube" / "dry_run.txt"


def test_dry_run_golden(kube, settings) -> None:
    selection = selection_from_flags(["a", "b", "kube-system"], False, [], None)
    text = dry_run(selection, "tcp port 80 or udp port 53", settings)
    if os.environ.get("REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    for line in text.splitlines():  # every printed filter compiles to the printed size
        if line.startswith("  filter: "):
            expr = line[len("  filter: "):]
            assert compile_filter(expr).insns


def test_dry_run_reuses_a_connection_and_reports_cidr_fallback(cluster, kube, settings) -> None:
    for i in range(1200):
        cluster.add_pod("c", f"batch-{i}", "node-b", f"10.245.{i // 200}.{i % 200 + 1}")
    text = dry_run(TargetSelection(namespaces=["c"]), "", settings, kube=kube)
    lines = text.splitlines()
    assert lines[0] == "kstap dry run: context fake, namespace c"
    assert lines[2] == "1201 target pods on 2 nodes"
    node_b = lines.index("node node-b (Ready): 1200 pods")
    compiled = next(line for line in lines[node_b:] if line.startswith("  compiled: "))
    assert compiled.endswith("BPF instructions, 60 CIDR blocks")  # 10 blocks hold .1-.200 of each /24
    assert ("  note: 1200 pod IPs exceed the 4096-instruction BPF limit as single hosts: aggregated into 60 "
            "CIDR blocks (exactly the pod IPs)") in text
    assert "ip net 10.245.0.128/26" in text


def test_dry_run_with_nothing_to_capture(kube, settings) -> None:
    text = dry_run(TargetSelection(namespaces=["a"], pod_regex="^zzz"), "", settings, kube=kube)
    assert "0 target pods on 0 nodes" in text and "no pod to capture: nothing would be deployed" in text
