"""Without CAP_NET_RAW, live capture exits 3 with a one-line reason and a hint (no traceback).

Both variants open nothing but a socket attempt on ``lo``, which the kernel refuses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges with setpriv"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed"),
]

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
NO_NET_RAW = ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw"]
CAP_NET_RAW_BIT = 13


def _nobody_can_run_python() -> bool:
    probe = subprocess.run([*AS_NOBODY, sys.executable, "-c", "import kstap"], capture_output=True,
                           timeout=30, check=False, cwd="/")
    return probe.returncode == 0


def _assert_cap_net_raw_error(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith("kstap: error: capturing needs the CAP_NET_RAW capability")
    assert lines[1].startswith("hint: run as root")
    assert "setcap cap_net_raw" in lines[1]
    assert r.stdout == ""


@pytest.mark.parametrize("backend", ["af_packet", "libpcap"])
def test_as_user_nobody(kstap_proc, backend: str) -> None:
    if not _nobody_can_run_python():
        pytest.skip(f"user nobody cannot run {sys.executable} or import kstap from it "
                    "(a venv under a private home directory)")
    r = kstap_proc("tap", "-i", "lo", "-c", "1", "--capture", backend, prefix=AS_NOBODY, cwd="/")
    _assert_cap_net_raw_error(r)


def test_nobody_really_lacks_the_capability() -> None:
    if not _nobody_can_run_python():
        pytest.skip("user nobody cannot run the venv's python")
    r = subprocess.run([*AS_NOBODY, sys.executable, "-c",
                        "import os; print(os.getuid(), open('/proc/self/status').read())"],
                       capture_output=True, text=True, timeout=30, check=False, cwd="/")
    assert r.stdout.split()[0] == "65534"
    cap_eff = int(r.stdout.split("CapEff:")[1].split()[0], 16)
    assert not cap_eff & (1 << CAP_NET_RAW_BIT)


@pytest.mark.parametrize("extra", [[], ["--capture", "libpcap"], ["--workers", "2"]],
                         ids=["af_packet", "libpcap", "fanout"])
def test_as_root_without_cap_net_raw(kstap_proc, extra: list[str]) -> None:
    """Root with CAP_NET_RAW removed from the bounding set (a restricted container)."""
    r = kstap_proc("tap", "-i", "lo", "-c", "1", *extra, prefix=NO_NET_RAW)
    _assert_cap_net_raw_error(r)


def test_root_without_cap_net_raw_is_still_root() -> None:
    r = subprocess.run([*NO_NET_RAW, sys.executable, "-c",
                        "import os; print(os.geteuid(), open('/proc/self/status').read())"],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "0"
    status = r.stdout.split(None, 1)[1]
    for field in ("CapEff:", "CapBnd:"):
        value = int(status.split(field)[1].split()[0], 16)
        assert not value & (1 << CAP_NET_RAW_BIT), field
