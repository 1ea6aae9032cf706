"""What a new user trips over with outputs (issue 16): each is checked before capture, or fails as an output.

Files come from ``examples/sample.pcapng`` (real HTTP and DNS from the demo network) replayed with ``--read``;
nothing here captures live traffic.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, _env, assert_two_line_error

SAMPLE = ROOT / "examples" / "sample.pcapng"


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    path = tmp_path / "in.pcapng"
    shutil.copyfile(SAMPLE, path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kstap(*args: str, stdin: object = subprocess.DEVNULL, cwd: Path | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "kstap", *args], cwd=cwd or ROOT, env=_env(), stdin=stdin,
                          capture_output=True, timeout=timeout, check=False)


# -- the data-loss trap: an output on top of the input -------------------------------------------------
@pytest.mark.parametrize("outputs", [["-w", "{in}"], ["-w", "{dir}/./in.pcapng"], ["--entries", "{in}"],
                                     ["-w", "{dir}/in.pcapng", "-c", "5"]])
def test_output_on_the_read_file_is_refused_and_the_input_kept(cli, capture: Path, outputs: list[str]) -> None:
    before = _digest(capture)
    argv = [a.format(**{"in": str(capture), "dir": str(capture.parent)}) for a in outputs]
    res = cli("tap", "--read", str(capture), *argv)
    assert res.code == 2, res.err
    assert_two_line_error(res.err, f"{argv[0]} ")
    assert "would overwrite the --read file" in res.err
    assert _digest(capture) == before


def test_ring_files_that_would_overwrite_the_read_file_are_refused(cli, tmp_path: Path) -> None:
    ring_member = tmp_path / "cap_00001.pcapng"
    shutil.copyfile(SAMPLE, ring_member)
    before = _digest(ring_member)
    res = cli("tap", "--read", str(ring_member), "-w", str(tmp_path / "cap.pcapng"), "-C", "1", "-W", "3")
    assert res.code == 2
    assert_two_line_error(res.err, f"-w {str(tmp_path / 'cap.pcapng')!r} (its ring files) would overwrite")
    assert _digest(ring_member) == before


def test_entries_and_w_on_one_file_are_refused(cli, capture: Path, tmp_path: Path) -> None:
    out = tmp_path / "both"
    res = cli("tap", "--read", str(capture), "-w", str(out), "--entries", str(out))
    assert res.code == 2
    assert_two_line_error(res.err, "--entries and -w name the same file")
    assert not out.exists()


def test_two_outputs_on_dev_null_are_fine(cli, capture: Path) -> None:
    res = cli("tap", "--read", str(capture), "-w", "/dev/null", "--entries", "/dev/null")
    assert res.code == 0, res.err


def test_dissect_entries_on_its_input_is_refused(cli, capture: Path) -> None:
    before = _digest(capture)
    res = cli("dissect", str(capture), "--entries", str(capture))
    assert res.code == 2
    assert_two_line_error(res.err, "--entries")
    assert _digest(capture) == before


# -- outputs checked before capture starts ----------------------------------------------------------------
def test_entries_into_a_missing_folder_is_a_usage_error_before_any_file(cli, capture: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.pcapng"
    res = cli("tap", "--read", str(capture), "-w", str(out), "--entries", str(tmp_path / "nodir" / "e.ndjson"))
    assert res.code == 2
    assert_two_line_error(res.err, f"--entries: cannot write {str(tmp_path / 'nodir' / 'e.ndjson')!r}: directory")
    assert not out.exists(), "no stub pcapng is left behind"


@pytest.mark.parametrize("name", ["x.pcap", "x.PCAP", "x.cap"])
def test_w_pcap_is_refused_with_the_pcapng_name_and_editcap(cli, capture: Path, tmp_path: Path, name: str) -> None:
    res = cli("tap", "--read", str(capture), "-w", str(tmp_path / name))
    assert res.code == 2
    assert_two_line_error(res.err, f"-w {str(tmp_path / name)!r}: kstap writes pcapng, not classic pcap")
    assert "editcap -F pcap" in res.err_lines[1]
    assert not (tmp_path / name).exists()


# -- outputs failing mid-run -----------------------------------------------------------------------------
def test_entries_on_dev_full_names_entries_and_closes_the_capture(capture: Path, tmp_path: Path, wireshark) -> None:
    out = tmp_path / "out.pcapng"
    r = _kstap("tap", "--read", str(capture), "-w", str(out), "--entries", "/dev/full")
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "kstap: error: --entries '/dev/full': cannot write: No space left on device" in err
    assert "cannot read" not in err and "internal error" not in err
    assert "hint: " in err
    info = wireshark.run("tshark", "-r", str(out), "-q", "-z", "io,stat,0")
    assert info.returncode == 0, info.stderr
    from kstap.formats.savefile import CaptureReader

    with out.open("rb") as fh:
        reader = CaptureReader(fh, str(out))
        assert sum(1 for _ in reader) > 0
        assert reader.statistics, "the capture file ends with its Interface Statistics Block"


@pytest.mark.parametrize("reader", ["true", "head -c 0"])
def test_dissect_into_a_pipe_closed_early_is_quiet(capture: Path, reader: str) -> None:
    cmd = f"{sys.executable} -m kstap dissect {capture} | {reader}"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "Broken pipe" not in r.stderr and "cannot read" not in r.stderr and "error" not in r.stderr


def test_dissect_into_a_closed_pipe_is_quiet(capture: Path) -> None:
    cmd = f"{sys.executable} -m kstap dissect {capture} | head -1"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["protocol"] in ("http/1.1", "dns")
    assert "Broken pipe" not in r.stderr and "cannot read" not in r.stderr and "error" not in r.stderr


def test_dissect_entries_on_dev_full_blames_the_output(capture: Path) -> None:
    r = _kstap("dissect", str(capture), "--entries", "/dev/full")
    err = r.stderr.decode()
    assert r.returncode == 1
    assert "kstap: error: --entries '/dev/full': cannot write: No space left on device" in err
    assert "cannot read" not in err


def test_packet_lines_into_a_closed_pipe_exit_0_quietly(capture: Path) -> None:
    r = subprocess.run(["bash", "-o", "pipefail", "-c", f"{sys.executable} -m kstap tap --read {capture} | true"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr and "Traceback" not in r.stderr


def test_packet_lines_on_a_full_device_say_so(capture: Path) -> None:
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "kstap", "tap", "--read", str(capture)], cwd=ROOT, env=_env(),
                           stdout=full, stderr=subprocess.PIPE, timeout=60, check=False)
    err = r.stderr.decode()
    assert r.returncode == 1
    assert "kstap: error: cannot print packets on standard output: No space left on device" in err
    assert "hint: " in err


# -- standard input ---------------------------------------------------------------------------------------
def test_read_dash_reads_standard_input(capture: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.pcapng"
    with capture.open("rb") as fh:
        r = _kstap("tap", "--read", "-", "-w", str(out), "--json", stdin=fh)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["event"] == "summary" and summary["captured"] == 253


def test_tap_w_dash_into_dissect_dash(capture: Path) -> None:
    cmd = f"{sys.executable} -m kstap tap --read {capture} -w - | {sys.executable} -m kstap dissect -"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    entries = [json.loads(line) for line in r.stdout.splitlines()]
    assert {e["protocol"] for e in entries} == {"http/1.1", "dns"}
    assert len(entries) == 60


def test_read_dash_from_a_terminal_is_a_usage_error() -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        r = _kstap("tap", "--read", "-", stdin=follower)
    finally:
        os.close(leader)
        os.close(follower)
    assert r.returncode == 2
    assert_two_line_error(r.stderr.decode(), "--read - reads a capture from standard input, but it is a terminal")


# -- sampling settings that were silently ignored --------------------------------------------------------------
def _summary(res) -> dict[str, object]:
    events = [json.loads(line) for line in res.out.splitlines()]
    return {"start": events[0], "summary": events[-1]}


def test_rate_without_mode_implies_percentage(cli, capture: Path) -> None:
    res = cli("tap", "--read", str(capture), "--rate", "10%", "--seed", "7", "--json")
    assert res.code == 0, res.err
    ev = _summary(res)
    assert ev["start"]["mode"] == "percentage"
    s = ev["summary"]
    assert s["final_rate"] == pytest.approx(0.1)
    assert s["flows_kept"] < s["flows_seen"]
    assert s["captured"] < 253


def test_min_rate_above_the_auto_start_starts_there(cli, capture: Path) -> None:
    res = cli("tap", "--read", str(capture), "--mode", "auto", "--min-rate", "50%", "--json")
    assert res.code == 0, res.err
    assert _summary(res)["summary"]["final_rate"] >= 0.5


def test_rate_below_min_rate_and_min_rate_outside_auto_are_refused(cli, capture: Path) -> None:
    res = cli("tap", "--read", str(capture), "--mode", "auto", "--rate", "5%", "--min-rate", "50%")
    assert res.code == 2
    assert_two_line_error(res.err, "--rate 0.05 is below --min-rate 0.5")
    res = cli("tap", "--read", str(capture), "--min-rate", "50%")
    assert res.code == 2
    assert_two_line_error(res.err, "--min-rate only applies to --mode auto")
