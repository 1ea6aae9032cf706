"""``kubectl kstap …`` through kubectl's own plugin mechanism: kubectl finds ``kubectl-kstap`` on PATH and
runs it (and, for completion, ``kubectl_complete-kstap``). Uses the machine's kubectl (/usr/bin/kubectl)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import _env

KUBECTL = shutil.which("kubectl")
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="no kubectl on this machine")


def kubectl(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**_env(), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path),
           "KUBECONFIG": str(tmp_path / "none.yaml")}
    assert KUBECTL is not None
    return subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True, timeout=60, check=False,
                          cwd=tmp_path)


def test_the_plugin_is_installed_beside_kstap() -> None:
    assert (BIN / "kubectl-kstap").is_file() and os.access(BIN / "kubectl-kstap", os.X_OK)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_kubectl_kstap_tap_help(tmp_path: Path, flag: str) -> None:
    r = kubectl("kstap", "tap", flag, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Usage: kubectl kstap tap [OPTIONS] [POD_REGEX]" in r.stdout
    assert "NAMESPACE" in r.stdout and "<list[str]>" not in r.stdout and "<bool>" not in r.stdout


def test_kubectl_kstap_usage_error_names_the_plugin(tmp_path: Path) -> None:
    r = kubectl("kstap", "tap", "--no-such-flag", tmp_path=tmp_path)
    assert r.returncode == 2
    assert "kstap: error: No such option: --no-such-flag" in r.stderr
    assert "hint: see 'kubectl kstap tap --help'" in r.stderr


def test_kubectl_completes_the_plugin(tmp_path: Path) -> None:
    r = kubectl("__complete", "kstap", "tap", "--mode", "", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["full", "percentage", "auto"] and lines[-1] == ":4", r.stdout + r.stderr
