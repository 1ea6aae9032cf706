"""Ctrl-C is heard at once before capture starts, as with tcpdump: during a long BPF compile (libpcap's
optimizer takes minutes over 1,499 ports), while opening a FIFO that has no writer yet, and in the CLI's
first moments (from its first line of Python: a signal while CPython itself starts, before any kstap code,
is the interpreter's). Each ends with exit 130 and one line, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, _env

MANY_PORTS = " or ".join(f"port {p}" for p in range(1000, 2499))


def _interrupt_after(args: list[str], delay: float, *, cwd: Path = ROOT) -> tuple[int, str, float]:
    """Start ``kstap ARGS``, send SIGINT after ``delay`` s; (exit code, stderr, seconds from signal to exit)."""
    proc = subprocess.Popen([sys.executable, "-m", "kstap", *args], cwd=cwd, env=_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(delay)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
        return proc.returncode, err, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.parametrize("command", [["filter", "-f", MANY_PORTS], ["tap", "--read", "{sample}", "-f", MANY_PORTS]],
                         ids=["filter", "tap"])
def test_ctrl_c_during_a_long_bpf_compile(command: list[str]) -> None:
    args = [a.format(sample=ROOT / "examples" / "sample.pcapng") for a in command]
    code, err, took = _interrupt_after(args, 2.0)
    assert code == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert took < 3.0, f"exit took {took:.1f} s after Ctrl-C"


def test_ctrl_c_while_opening_a_fifo_without_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    code, err, took = _interrupt_after(["tap", "--read", str(fifo), "-w", str(tmp_path / "out.pcapng")], 1.5)
    assert code == 130, err
    assert err.splitlines()[0] == "kstap: error: interrupted before capture started", err
    assert "Traceback" not in err and took < 3.0
    assert not (tmp_path / "out.pcapng").exists()


@pytest.mark.parametrize("delay", [0.1, 0.15, 0.2, 0.3, 0.45])
def test_ctrl_c_in_the_first_moments_prints_no_traceback(tmp_path: Path, delay: float) -> None:
    code, err, _took = _interrupt_after(["tap", "--read", str(ROOT / "examples" / "sample.pcapng"),
                                         "--realtime", "-w", str(tmp_path / "o.pcapng")], delay)
    assert "Traceback" not in err, err
    assert code in (0, 130, -signal.SIGINT), err
