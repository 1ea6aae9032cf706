"""The dashboard view: golden frames at width 100, and the pieces it is drawn from.

Regenerate the frames after an intended change with ``make golden`` (``REGEN_GOLDEN=1``), then
read the diff of tests/golden/dashboard/*.txt before committing it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.console import Console

from kstap.dashboard import samples, view
from kstap.model import Alert, ResourceStats, StatsSnapshot, WorkerStats

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "dashboard"
WIDTH = 100


def frame(snapshot: StatsSnapshot, width: int = WIDTH, **kw: float) -> str:
    console = Console(record=True, width=width, color_system=None, file=io.StringIO())
    console.print(view.render(snapshot, width=width, **kw))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_golden_frame(name: str) -> None:
    text = frame(samples.ALL[name]())
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("REGEN_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing {path}: run 'make golden'"
    assert text == path.read_text(encoding="utf-8"), f"{name}: frame differs from {path} (make golden)"


def test_golden_set_is_complete() -> None:
    assert {p.stem for p in GOLDEN.glob("*.txt")} == set(samples.ALL)
    assert {"steady_full", "auto_falling", "memory_warn", "memory_critical", "several_workers",
            "lost_worker"} <= set(samples.ALL)


def test_frames_say_what_the_issue_asks_for() -> None:
    steady = frame(samples.steady_full())
    assert "full mode" in steady and "sampling rate 100%" in steady and "no alerts" in steady
    assert "capture.pcapng" in steady and "tcp port 80 or udp port 53" in steady and "0:01:05" in steady
    falling = frame(samples.auto_falling())
    assert "auto mode" in falling and "sampling rate 12.0%" in falling and "changes" in falling
    assert "5,138 (0.24%)" in falling and "pressure 0.74 → setpoint 0.70" in falling
    assert "throttled 37 periods" in falling
    warn = frame(samples.memory_level(0.78))
    assert "78.0% WARN" in warn and "CRITICAL" not in warn
    critical = frame(samples.memory_level(0.93, oom=1))
    assert "93.0% CRITICAL" in critical and "OOM events 1" in critical and "emergency" in critical
    lost = frame(samples.lost_worker())
    assert "LOST" in lost and "1 lost" in lost and "up ↻1" in lost and "worker-lost" in lost
    several = frame(samples.several_workers())
    assert several.count(" up ") >= 4 and "GET /api/v1/cart 18,231" in several


def test_memory_thresholds_are_parameters() -> None:
    s = samples.memory_level(0.78)
    assert "78.0% WARN" in frame(s)
    assert "78.0% WARN" not in frame(s, warn=0.8, critical=0.95) and "78.0%" in frame(s, warn=0.8, critical=0.95)
    assert "78.0% CRITICAL" in frame(s, warn=0.5, critical=0.75)


@pytest.mark.parametrize("width", [40, 60, 80, 100, 132, 200])
@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_fits_the_width(name: str, width: int) -> None:
    lines = frame(samples.ALL[name](), width=width).splitlines()
    assert lines and max(len(line) for line in lines) <= width


def test_pure_and_tolerant_of_missing_data() -> None:
    s = samples.auto_falling()
    assert frame(s) == frame(s)
    bare = frame(StatsSnapshot())
    assert "memory" in bare and "not measured" in bare and "controller" in bare
    odd = StatsSnapshot(received=0, rate=float("nan"), resources=ResourceStats(memory_bytes=5, memory_limit=None),
                        workers=[WorkerStats(worker=3, alive=False)],
                        alerts=[Alert(time=1_700_000_000.0, level="weird", kind="x", message="y" * 500)])
    text = frame(odd)
    assert "no limit found" in text and "LOST" in text and "…" in text


def test_resample_draws_one_cell_per_second_then_compresses() -> None:
    points = [(float(t), 1.0 if t < 5 else 0.5) for t in range(10)]
    cells = view.resample(points, 20)
    assert cells[:10] == [1.0] * 5 + [0.5] * 5 and cells[10:] == [None] * 10
    long = [(float(t), 1.0) for t in range(1000)]
    long[500] = (500.0, 0.1)  # a one-second cut in a long run stays visible (min per cell)
    cells = view.resample(long, 50)
    assert len(cells) == 50 and None not in cells and min(c for c in cells if c is not None) == 0.1
    assert view.resample([], 5) == [None] * 5 and view.resample(points, 0) == []


def test_with_now_extends_a_changes_only_history() -> None:
    assert view.with_now([(0.0, 1.0), (3.0, 0.5)], 10.0, 0.5) == [(0.0, 1.0), (3.0, 0.5), (10.0, 0.5)]
    assert view.with_now([], 2.0, 0.3) == [(2.0, 0.3)]


def test_chart_rows_and_bar() -> None:
    assert view.chart_rows([0.0, 0.5, 1.0, None], 1) == ["▁▄█ "]
    rows = view.chart_rows([1.0, 0.25], 2)
    assert rows == ["█ ", "█▄"]
    assert view.bar(0.5, 10, "green").plain == "█████░░░░░"
    assert view.bar(1.7, 4, "red").plain == "████"
    assert view.bar(0.0625, 2, "red").plain == "▏░"


def test_number_formats() -> None:
    assert [view.fmt_pct(x) for x in (1.0, 0.42, 0.005, 0.00001, 0.0)] == ["100%", "42.0%", "0.50%", "<0.01%", "0%"]
    assert view.fmt_bytes(512) == "512 B" and view.fmt_bytes(3 * 1024**3) == "3.0 GiB"
    assert view.fmt_elapsed(3725) == "1:02:05" and view.fmt_span(725) == "12m05s" and view.fmt_span(7300) == "2h01m"
    assert view.fmt_alert_time(12.34) == "+12.3s"
    assert view.level(0.69, 0.7, 0.9) == "ok" and view.level(0.7, 0.7, 0.9) == "warn"
    assert view.level(0.95, 0.7, 0.9) == "critical" and view.level(None, 0.7, 0.9) == "ok"
