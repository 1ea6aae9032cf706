"""Shell completion of namespaces, pods and contexts from the kubeconfig's cluster (the fake API server),
and of --mode/--profile/--capture values, through the real bash completion protocol of the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, _env


def complete(words: str, env_extra: dict[str, str] | None = None) -> list[str]:
    """What ``kstap`` offers for the last word of ``words`` (bash: COMP_WORDS/COMP_CWORD)."""
    parts = words.split(" ")
    env = {**_env(), "COMP_WORDS": words, "COMP_CWORD": str(len(parts) - 1), "_KSTAP_COMPLETE": "complete_bash",
           "HOME": os.environ.get("HOME", "/nonexistent"), **(env_extra or {})}
    r = subprocess.run([sys.executable, "-m", "kstap"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line]


def test_fixed_values_complete() -> None:
    assert complete("kstap tap --mode ") == ["full", "percentage", "auto"]
    assert complete("kstap tap --mode p") == ["percentage"]
    assert complete("kstap tap --profile ") == ["dev", "staging", "prod"]
    assert complete("kstap tap --capture ") == ["af_packet", "libpcap", "pf_ring", "best"]


def test_namespaces_come_from_the_current_context(kubeconfig: Path) -> None:
    assert complete(f"kstap tap --kubeconfig {kubeconfig} -n ") == ["a", "b", "c", "default", "kube-system"]
    assert complete(f"kstap tap --kubeconfig {kubeconfig} -e kube") == ["kube-system"]
    assert complete("kstap tap -n ", {"KUBECONFIG": str(kubeconfig)}) == ["a", "b", "c", "default", "kube-system"]


def test_pods_of_the_chosen_namespace(kubeconfig: Path) -> None:
    assert complete(f"kstap tap --kubeconfig {kubeconfig} -n a ") == ["db-0", "pending-1", "web-1", "web-2"]
    assert complete(f"kstap tap --kubeconfig {kubeconfig} -n b api") == ["api-1", "api-2"]
    assert complete(f"kstap tap --kubeconfig {kubeconfig} ") == ["hello-1"]  # the context's namespace
    assert "coredns-1" in complete(f"kstap tap --kubeconfig {kubeconfig} -A ")


def test_contexts_complete_from_the_kubeconfig(kubeconfig: Path) -> None:
    names = complete(f"kstap tap --kubeconfig {kubeconfig} --context ")
    assert names and all(isinstance(n, str) for n in names)


def test_no_cluster_completes_nothing_quietly(tmp_path: Path) -> None:
    dead = tmp_path / "dead.yaml"
    dead.write_text("apiVersion: v1\nkind: Config\ncurrent-context: x\n"
                    "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
                    "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n")
    assert complete(f"kstap tap --kubeconfig {dead} -n ") == []
    assert complete(f"kstap tap --kubeconfig {tmp_path / 'missing.yaml'} -n ") == []
