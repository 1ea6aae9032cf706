"""A live 802.1Q frame is written with its tag where it was: the kernel moves the tag into the ring's
packet header (tpacket3_hdr.hv1.tp_vlan_tci at +32, tp_vlan_tpid at +36) and kstap puts it back, as
libpcap does. Before, both the C and the Python reader took tp_rxhash (+28) for the TCI and the TCI
for the TPID: the file had ethertype 0x200a and no VLAN.

The tagged frames are sent from a packet socket in the lab's client namespace: this kernel has no
8021q module, so no VLAN device can be their real peer. Checked with tshark, on the C path of full
and of auto mode (its first-packet table keys the restored frame) and on the pure-Python path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kstap.demo.lab import Lab
from tests.conftest import ROOT

pytestmark = [pytest.mark.privileged,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tshark") is None, reason="needs root and tshark")]

SEND = """
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 28, 0, 0, 64, 17, 0, bytes([10, 9, 9, 1]), bytes([10, 9, 9, 2]))
udp = struct.pack('!HHHH', 1234, 9, 8, 0)
tag = b'\\x81\\x00' + struct.pack('!H', (1 << 13) | 10)  # PCP 1, VID 10
for _ in range(3):
    s.send(b'\\xff' * 6 + b'\\x02\\0\\0\\0\\0\\x01' + tag + b'\\x08\\x00' + ip + udp)
"""


@pytest.mark.parametrize("how", ["full", "auto", "pure-python"])
def test_a_live_vlan_tag_is_put_back(tmp_path: Path, how: str) -> None:
    out = tmp_path / "vlan.pcapng"
    mode = ["--mode", "auto", "--rate", "1", "--seed", "7"] if how == "auto" else ["--mode", "full"]
    env = dict(os.environ, PYTHONPATH=str(ROOT)) | ({"KSTAP_PURE_PYTHON": "1"} if how == "pure-python" else {})
    with Lab() as lab:
        tap = subprocess.Popen([sys.executable, "-m", "kstap", "tap", "--netns", lab.server, "-i", lab.server_if,
                                "-w", str(out), "--no-dashboard", "--json", "--duration", "4", "-f", "vlan", *mode],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            assert tap.stdout is not None
            while '"event":"start"' not in tap.stdout.readline():
                assert tap.poll() is None and time.monotonic() < deadline, tap.stderr.read() if tap.stderr else ""
            subprocess.run(["nsenter", f"--net=/run/netns/{lab.client}", sys.executable, "-c", SEND, lab.client_if],
                           check=True, timeout=30)
            tap.communicate(timeout=30)
        finally:
            if tap.poll() is None:
                tap.kill()
                tap.wait(timeout=10)
    assert tap.returncode == 0
    rows = subprocess.run(["tshark", "-n", "-r", str(out), "-T", "fields", "-e", "eth.type", "-e", "vlan.id",
                           "-e", "vlan.priority", "-e", "vlan.etype", "-e", "ip.dst"],
                          capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    assert [r for r in rows if r] == ["0x8100\t10\t1\t0x0800\t10.9.9.2"] * 3
