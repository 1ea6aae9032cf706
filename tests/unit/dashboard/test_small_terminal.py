"""The dashboard on a small terminal (60 x 20): whole panels or none, never cut, and figures that are
right: the workers table's received count, packets/s as a recent rate."""

from __future__ import annotations

import io
from collections import deque
from types import SimpleNamespace

import pytest
from rich.console import Console

from kstap.dashboard import samples, view
from kstap.model import CaptureSummary
from kstap.pipeline.loop import RATE_WINDOW, Capture
from kstap.pipeline.snapshots import workers


def _frame(name: str, width: int, height: int) -> list[str]:
    console = Console(record=True, width=width, color_system=None, file=io.StringIO())
    console.print(view.render(samples.ALL[name](), width=width, height=height))
    return console.export_text().splitlines()


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_60_by_20_fits_with_whole_panels(name: str) -> None:
    lines = _frame(name, 60, 19)  # the live view keeps a row for its key hint
    assert len(lines) <= 19
    assert all(len(line) <= 60 for line in lines)
    assert sum(line.startswith("╭") for line in lines) == sum(line.startswith("╰") for line in lines) >= 2
    full = _frame(name, 60, 200)
    if len(full) > 19:
        assert "hidden" in lines[-1] and "taller terminal" in lines[-1]


def test_a_tall_terminal_shows_everything() -> None:
    assert _frame("several_workers", 100, 200) == _frame("several_workers", 100, 10_000)


class _Local:
    capabilities = SimpleNamespace(worker_stats=False)


def test_one_local_worker_shows_the_kernel_counters() -> None:
    summary = CaptureSummary(captured=140, received=143, dropped=3, per_worker={0: 140})
    (w,) = workers(_Local(), summary, 1.0)  # type: ignore[arg-type]
    assert (w.captured, w.received, w.dropped) == (140, 143, 3)


def test_packets_per_second_is_recent_and_falls_to_zero_when_traffic_stops() -> None:
    fake = SimpleNamespace(recent=deque([(0.0, 0)]), summary=CaptureSummary())
    rates = []
    for second in range(1, 21):
        fake.summary.captured = min(second, 10) * 1000  # 1,000 pkt/s for 10 s, then nothing
        rates.append(Capture._recent_rate(fake, float(second)))  # type: ignore[arg-type]
    assert rates[9] == pytest.approx(1000)
    assert rates[10 + int(RATE_WINDOW)] == 0.0  # the average since the start would still say 500+


@pytest.mark.parametrize("width", range(40, 161, 8))
def test_no_panel_title_is_cut(width: int) -> None:
    for name in samples.ALL:
        for line in _frame(name, width, 10_000):
            if line.lstrip().startswith("╭"):
                assert "…" not in line and line.rstrip().endswith("╮"), (name, width, line)
