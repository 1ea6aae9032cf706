"""sampling.flow_table where the kernel table cannot be had.

``kstap worker`` honours it as ``kstap tap`` does (``--flow-table`` or ``KSTAP_SAMPLING_FLOW_TABLE``):
run as root without CAP_BPF/CAP_SYS_ADMIN, ``kernel`` is an error (exit 3), ``auto`` falls back with
its warning and ``user`` starts on the fallback without one. ``kstap tap --workers 2`` (a fanout
group of processes) cannot have it either: ``kernel`` says so and what to do, ``auto`` falls back
with one warning line.

Every capture is on ``lo`` for a second with nothing sent; workers serve on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kstap.filters import bpf_syscall
from tests.conftest import ROOT, assert_two_line_error, run_kstap

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed"),
]

NO_BPF = ["setpriv", "--bounding-set=-bpf,-sys_admin", "--inh-caps=-bpf,-sys_admin"]
FALLBACK = "flows are decided in user space"


def worker(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(16))
    token.chmod(0o600)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KSTAP_")} | {"PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*NO_BPF, sys.executable, "-m", "kstap", "worker", "--listen", "127.0.0.1:0", "--token-file", str(token),
         "-i", "lo", "--mode", "auto", "--duration", "1", "--linger", "0", *args],
        cwd=ROOT, env=environ | (env or {}), capture_output=True, text=True, timeout=60, check=False)


def test_without_bpf_the_process_really_lacks_it() -> None:
    r = subprocess.run([*NO_BPF, sys.executable, "-c", "from kstap.filters import bpf_syscall; "
                        "print(bpf_syscall.probe())"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert "CAP_BPF" in r.stdout, r.stdout + r.stderr
    assert bpf_syscall.probe() is None  # and the test process itself has it


@pytest.mark.parametrize("how", ["flag", "env"])
def test_kernel_without_bpf_is_an_environment_error(tmp_path: Path, how: str) -> None:
    r = (worker(tmp_path, "--flow-table", "kernel") if how == "flag" else
         worker(tmp_path, env={"KSTAP_SAMPLING_FLOW_TABLE": "kernel"}))
    assert r.returncode == 3, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith(("kstap: error:", "hint:"))]
    assert_two_line_error("\n".join(errors), "the in-kernel flow table is not available")


def test_auto_falls_back_with_a_warning_and_user_without_one(tmp_path: Path) -> None:
    auto = worker(tmp_path)
    assert auto.returncode == 0, auto.stderr
    assert FALLBACK in auto.stderr
    user = worker(tmp_path, env={"KSTAP_SAMPLING_FLOW_TABLE": "user"})
    assert user.returncode == 0, user.stderr
    assert FALLBACK not in user.stderr and "capture ended" in user.stderr
    flag_wins = worker(tmp_path, "--flow-table", "user", env={"KSTAP_SAMPLING_FLOW_TABLE": "kernel"})
    assert flag_wins.returncode == 0 and FALLBACK not in flag_wins.stderr, flag_wins.stderr


def test_a_bad_value_is_a_usage_error(tmp_path: Path) -> None:
    r = worker(tmp_path, "--flow-table", "gpu")
    assert r.returncode == 2
    assert_two_line_error(r.stderr, "sampling.flow_table must be auto, kernel or user")


def test_workers_n_cannot_have_the_kernel_table_and_say_so(tmp_path: Path) -> None:
    out = str(tmp_path / "x.pcapng")
    args = ["tap", "-i", "lo", "--workers", "2", "--mode", "auto", "-w", out, "--duration", "1", "--no-dashboard"]
    kernel = run_kstap(*args, "--set", "sampling.flow_table=kernel")
    assert kernel.returncode == 3
    assert_two_line_error(kernel.stderr, "the in-kernel flow table is not available: --workers 2")
    assert "capture with one worker" in kernel.stderr and not os.path.exists(out)
    auto = run_kstap(*args)
    assert auto.returncode == 0, auto.stderr
    warnings = [line for line in auto.stderr.splitlines() if FALLBACK in line]
    assert warnings == ["kstap: warning: flows are decided in user space (classic filter ceiling): --workers 2"]
