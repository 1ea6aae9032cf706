"""The simulated plant: first-order lag, dead time, seeded noise, OOM; and the step-response figures."""

from __future__ import annotations

import math
import statistics

import pytest

from kstap.control.plant import FakeClock, PlantSettings, SimulatedPlant, Tick, step_response
from kstap.model import ControllerState


def test_fake_clock() -> None:
    clock = FakeClock(10.0)
    assert clock() == 10.0
    clock.advance(2.5)
    assert clock() == 12.5


def test_open_loop_settles_to_base_plus_gain_times_rate() -> None:
    plant = SimulatedPlant(PlantSettings(noise=0.0), initial_rate=0.1)
    for _ in range(60):
        plant.step(0.4)
    assert plant.memory == pytest.approx(0.25 + 1.2 * 0.4, abs=1e-4)
    assert plant.cpu == pytest.approx(0.05 + 0.5 * 0.4, abs=1e-4)
    plant.load = 2.0
    for _ in range(60):
        plant.step(0.2)
    assert plant.memory == pytest.approx(0.25 + 1.2 * 2.0 * 0.2, abs=1e-4)


def test_first_order_lag_and_dead_time() -> None:
    s = PlantSettings(noise=0.0, delay=2, memory_tau=5.0)
    plant = SimulatedPlant(s, initial_rate=0.1)
    start = plant.memory
    memories = [plant.step(0.5).memory_bytes / s.memory_limit for _ in range(6)]
    assert memories[0] == pytest.approx(start, abs=1e-6) and memories[1] == pytest.approx(start, abs=1e-6)
    target = 0.25 + 1.2 * 0.5
    assert memories[2] == pytest.approx(target + (start - target) * math.exp(-1 / 5.0), abs=1e-6)
    assert memories[3] == pytest.approx(target + (start - target) * math.exp(-2 / 5.0), abs=1e-6)


def test_clock_advances_one_tick_per_step() -> None:
    clock = FakeClock()
    plant = SimulatedPlant(PlantSettings(tick=0.5), clock=clock)
    for _ in range(4):
        plant.step(0.1)
    assert clock() == 2.0


def test_noise_is_seeded_and_has_the_stated_sigma() -> None:
    def series(seed: int) -> list[int]:
        plant = SimulatedPlant(PlantSettings(seed=seed, noise=0.01), initial_rate=0.3)
        return [plant.step(0.3).memory_bytes for _ in range(2000)]

    assert series(1) == series(1) and series(1) != series(2)
    limit = PlantSettings().memory_limit
    values = [v / limit for v in series(3)[50:]]
    assert statistics.pstdev(values) == pytest.approx(0.01, rel=0.1)


def test_oom_kill_resets_memory_and_counts() -> None:
    plant = SimulatedPlant(PlantSettings(noise=0.0, memory_tau=1.0, delay=0))
    stats = plant.measure()
    for _ in range(10):
        stats = plant.step(1.0)  # 0.25 + 1.2: far past the limit
    assert plant.oom_events >= 1 and stats.oom_events == plant.oom_events
    assert plant.memory < 1.0
    assert stats.psi_memory_full_total is not None and stats.psi_memory_full_total > 0


def test_cpu_is_capped_at_the_quota() -> None:
    plant = SimulatedPlant(PlantSettings(noise=0.0, cpu_gain=3.0))
    for _ in range(30):
        plant.step(1.0)
    assert plant.cpu == 1.0


def ticks(values: list[float]) -> list[Tick]:
    return [Tick(float(i), 1.0, 0.5, v, 0.0, ControllerState(), 0) for i, v in enumerate(values)]


def test_step_response_figures() -> None:
    # up past the band, back under the setpoint (overshoot), then settled with a small wobble
    values = [0.70, 0.80, 0.85, 0.75, 0.66, 0.68, 0.70, 0.71, 0.695, 0.71, 0.69, 0.72]
    r = step_response(ticks(values), 0, len(values), 0.70)
    assert r.settling_time == 5.0  # from t=5 every value is within ±0.035 (0.66 is not)
    assert r.overshoot == pytest.approx(0.04 / 0.70)
    assert r.peak == pytest.approx(0.15 / 0.70)
    assert r.crossings == 3  # after settling: 0.68 → 0.71 → 0.69 → 0.72 each clear ±1% (0.007)
    never = step_response(ticks([0.70, 0.90, 0.90]), 0, 3, 0.70)
    assert never.settling_time is None
    calm = step_response(ticks([0.70, 0.705, 0.695]), 0, 3, 0.70)  # inside the ±1% hysteresis
    assert (calm.settling_time, calm.overshoot, calm.crossings) == (0.0, 0.0, 0)
