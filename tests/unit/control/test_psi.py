"""PSI files: /proc/pressure/* and cgroup v2 *.pressure."""

from __future__ import annotations

from pathlib import Path

from kstap.control.psi import Psi, PsiLine, parse_psi, read_psi


def test_both_lines() -> None:
    text = "some avg10=1.50 avg60=0.75 avg300=0.25 total=123456\nfull avg10=0.10 avg60=0.05 avg300=0.00 total=789\n"
    assert parse_psi(text) == Psi(some=PsiLine(1.5, 0.75, 0.25, 123456), full=PsiLine(0.1, 0.05, 0.0, 789))


def test_cpu_before_5_13_has_only_some() -> None:
    psi = parse_psi("some avg10=3.00 avg60=2.00 avg300=1.00 total=9000\n")
    assert psi is not None and psi.full is None and psi.some == PsiLine(3.0, 2.0, 1.0, 9000)


def test_garbage_and_partial_lines_are_skipped() -> None:
    assert parse_psi("") is None
    assert parse_psi("hello world\nsome avg10=x avg60=1 avg300=1 total=1\n") is None
    psi = parse_psi("full avg10=1 avg60=1 total=1\nsome avg10=0.5 avg60=0.5 avg300=0.5 total=7 extra=1\n")
    assert psi is not None and psi.full is None and psi.some is not None and psi.some.total == 7


def test_read_missing_file_is_none(tmp_path: Path) -> None:
    assert read_psi(str(tmp_path / "nope")) is None
    (tmp_path / "memory.pressure").write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert read_psi(str(tmp_path / "memory.pressure")) == Psi(some=PsiLine(0.0, 0.0, 0.0, 0))


def test_reads_this_hosts_file_when_psi_is_on() -> None:
    psi = read_psi("/proc/pressure/memory")
    if psi is not None:  # PSI may be off (psi=0) or absent on old kernels
        assert psi.some is not None and psi.some.total >= 0
