#!/usr/bin/env python3
"""Regenerate examples/sample.pcapng: ~3 s of the demo network at low rates (needs root).

    sudo .venv/bin/python examples/make_sample.py [--out FILE]

The sample lets anyone without root try the pipeline offline:
``kstap tap --read examples/sample.pcapng -w out.pcapng``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent / "sample.pcapng"
MAX_BYTES = 200_000
"""The sample is committed to the repository: keep it small."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SAMPLE, help=f"where to write (default {SAMPLE})")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of traffic (default 3)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("make_sample: the demo network needs root; run it with sudo", file=sys.stderr)
        return 3
    cmd = [sys.executable, "-m", "kstap", "demo", "--duration", str(args.duration),
           "--udp-pps", "20", "--mode", "full", "--entries", "", "--no-dashboard", "-w", str(args.out)]
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        return rc
    args.out.chmod(0o644)  # a sample for everyone: the replay hint is for users without root
    size = args.out.stat().st_size
    print(f"make_sample: wrote {args.out} ({size} bytes)", file=sys.stderr)
    if size > MAX_BYTES:
        print(f"make_sample: larger than {MAX_BYTES} bytes; lower --duration", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
