"""The tick's schedule: once a second, and on a block's wake-up when only a file waits.

A simulated loop: it sleeps until the schedule's wait ends or the next block is handed over
(the kernel's retire timer: a fixed period, whatever the loop does), whichever comes first.
"""

from __future__ import annotations

import itertools

import pytest

from kstap.pipeline.tick_schedule import EARLY, LATE, TickSchedule


def run(period: float | None, phase: float, *, coalesce: bool = True, seconds: float = 30.0,
        ) -> tuple[list[float], int, set[float]]:
    """(tick times, wake-ups, the block wake-ups) of ``seconds`` of a loop fed a block every
    ``period`` s from ``phase`` on (None: idle)."""
    schedule = TickSchedule(0.0, coalesce=coalesce)
    blocks = [] if period is None else [phase + k * period for k in range(int(seconds / period) + 2)]
    now, packets, wakes, i = 0.0, False, 0, 0
    ticks: list[float] = []
    block_wakes: set[float] = set()
    while now < seconds:
        if schedule.tick_now(now, packets):
            ticks.append(now)
        until = now + schedule.wait(now)
        if i < len(blocks) and blocks[i] <= until:
            now, packets = max(now, blocks[i]), True
            block_wakes.add(now)
            i += 1
        else:
            now, packets = until + 0.001, False  # poll's ms rounding wakes it a little late
        wakes += 1
    return ticks, wakes, block_wakes


def gaps(ticks: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(ticks)]


@pytest.mark.parametrize("coalesce", [True, False])
def test_an_idle_capture_ticks_once_a_second(coalesce: bool) -> None:
    ticks, wakes, _ = run(None, 0.0, coalesce=coalesce)
    assert len(ticks) == 29 and wakes == len(ticks) + 1
    assert all(g == pytest.approx(1.001, abs=1e-9) for g in gaps(ticks))


@pytest.mark.parametrize("phase", [0.0, 0.1, 0.3, 0.5, 0.6, 0.8, 0.99])
@pytest.mark.parametrize("period", [1.024, 1.0, 0.512, 1.04])
def test_the_tick_rides_on_the_retire_timers_wake_up(period: float, phase: float) -> None:
    ticks, wakes, block_wakes = run(period, phase)
    # from the third tick on, every tick is a block's wake-up: one wake-up a block, none for the tick
    assert all(t in block_wakes for t in ticks[3:]), ticks
    blocks_seen = len(block_wakes)
    assert wakes <= blocks_seen + 4
    assert all(1 - EARLY - 1e-9 <= g <= 1 + LATE + 0.01 for g in gaps(ticks)), gaps(ticks)
    assert len(ticks) >= 30 / max(period, 1.0) / (1 + 0.05) - 3


def test_without_coalescing_the_tick_has_its_own_wake_up() -> None:
    ticks, wakes, block_wakes = run(1.024, 0.5, coalesce=False)
    assert not any(t in block_wakes for t in ticks)
    assert wakes >= len(ticks) + len(block_wakes) - 1


@pytest.mark.parametrize("coalesce", [True, False])
def test_a_busy_capture_ticks_at_the_first_wake_up_after_the_second(coalesce: bool) -> None:
    ticks, _, _ = run(0.16, 0.05, coalesce=coalesce)  # a 4 MiB block every 0.16 s: never asleep for long
    assert all(1.0 <= g <= 1.0 + 0.16 + 1e-9 for g in gaps(ticks)), gaps(ticks)


def test_after_the_traffic_stops_the_tick_is_back_to_once_a_second() -> None:
    schedule = TickSchedule(0.0, coalesce=True)
    assert schedule.tick_now(1.01, True)
    assert schedule.wait(1.01) == pytest.approx(1.0 + LATE)  # waiting for the next block
    assert not schedule.tick_now(2.02, False)  # nothing came by the due time: wait on
    assert schedule.tick_now(2.52, False)
    assert schedule.wait(2.52) == pytest.approx(1.0)  # no packets for over a second: no more waiting
