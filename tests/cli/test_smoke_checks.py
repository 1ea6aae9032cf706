"""CI smoke checks: --expect-packets / --max-drop turn a finished capture into exit 5."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "sample.pcapng"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kstap", "tap", "--read", str(SAMPLE), *args],
                          capture_output=True, text=True, timeout=60)


def test_expect_packets_met_is_exit_0(tmp_path: Path) -> None:
    r = run("-w", str(tmp_path / "a.pcapng"), "--expect-packets", "10", "--max-drop", "0")
    assert r.returncode == 0, r.stderr


def test_too_few_packets_is_exit_5_with_the_file_kept(tmp_path: Path) -> None:
    out = tmp_path / "b.pcapng"
    r = run("-w", str(out), "--expect-packets", "1000000")
    assert r.returncode == 5
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(("kstap: error:", "hint:"))]
    assert lines[0].startswith("kstap: error: captured") and lines[1].startswith("hint:")
    assert "Traceback" not in r.stderr
    assert subprocess.run(["tshark", "-r", str(out), "-c", "1"], capture_output=True).returncode == 0


def test_json_summary_carries_exit_code_5(tmp_path: Path) -> None:
    r = run("-w", str(tmp_path / "c.pcapng"), "--expect-packets", "1000000", "--json")
    assert r.returncode == 5
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["event"] == "summary" and summary["exit_code"] == 5


def test_bad_max_drop_is_a_usage_error() -> None:
    r = run("--max-drop", "2")
    assert r.returncode == 2 and "--max-drop" in r.stderr
