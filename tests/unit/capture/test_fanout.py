"""kstap.capture.fanout's bookkeeping for lost workers (the processes themselves: tests/privileged)."""

from __future__ import annotations

import signal

from kstap.capture.fanout import MAX_RESTARTS, WorkerLost, _carry, _exit_reason
from kstap.errors import ExitCode, WorkerFailure
from kstap.model import SourceStats


def test_how_a_worker_ended() -> None:
    assert _exit_reason(-signal.SIGKILL) == "killed by SIGKILL"
    assert _exit_reason(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert _exit_reason(1) == "exit code 1"
    assert _exit_reason(None) == "exited"
    assert _exit_reason(-200) == "killed by signal 200"


def test_worker_lost_is_a_worker_failure_with_exit_4() -> None:
    restarted = WorkerLost(1, "killed by SIGKILL", True)
    assert isinstance(restarted, WorkerFailure) and restarted.code == ExitCode.WORKER
    assert restarted.message == "capture worker 1 lost (killed by SIGKILL); restarted it"
    assert WorkerLost(0, "exit code 1", False).message == "capture worker 0 lost (exit code 1)"
    limit = WorkerLost(2, "killed by SIGKILL", False, limit=True)
    assert limit.message.endswith(f"not restarted again (lost {MAX_RESTARTS + 1} times)")
    assert restarted.hint and "ring" in restarted.hint


def test_a_restarted_workers_counters_continue_from_its_predecessors() -> None:
    base = [SourceStats(100, 5, 90), SourceStats(10, 0, 10)]
    new = [SourceStats(7, 1, 6), SourceStats(0, 0, 0)]
    carried = _carry(new, base)
    assert [(s.received, s.dropped, s.delivered) for s in carried] == [(107, 6, 96), (10, 0, 10)]
    assert base[0].received == 100  # the base is not modified
    assert _carry(new, None) is new
