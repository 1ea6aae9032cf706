"""Live compilation matches tcpdump's on a live interface (the vlan case differs from offline)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a live libpcap handle)")


@pytest.mark.parametrize("expression", ["vlan and udp", "vlan 100 and tcp port 80", "udp port 53"])
def test_kstap_filter_on_an_interface_matches_tcpdump(expression: str) -> None:
    ours = subprocess.run([sys.executable, "-m", "kstap", "filter", "-i", "lo", "-d", "-f", expression],
                          capture_output=True, text=True, timeout=30)
    theirs = subprocess.run(["tcpdump", "-d", "-i", "lo", expression], capture_output=True, text=True,
                            timeout=30)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout
    assert ours.stdout.strip()


def test_live_vlan_program_differs_from_the_offline_one() -> None:
    live = subprocess.run([sys.executable, "-m", "kstap", "filter", "-i", "lo", "-d", "-f", "vlan"],
                          capture_output=True, text=True, timeout=30).stdout
    offline = subprocess.run([sys.executable, "-m", "kstap", "filter", "-d", "-f", "vlan"],
                             capture_output=True, text=True, timeout=30).stdout
    assert "vlanp" in live and "vlanp" not in offline
