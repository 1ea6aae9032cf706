"""The auto-mode controller, on an injected clock: step responses on the simulated plant, emergencies,
anti-windup, slew limits, dead-band. No sleeps: FakeClock only. Bounds are the ones in docs/control.md.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest

from kstap.control.controller import ControllerSettings, RateController
from kstap.control.plant import (
    FakeClock,
    PlantSettings,
    SimulatedPlant,
    StepResponse,
    load_step_experiment,
    simulate,
    step_response,
)
from kstap.model import ControllerState, ResourceStats

LIMIT = 1_000_000


def stats(memory: float | None = None, cpu: float | None = None, *, oom: int = 0,
          psi_full_total: int | None = None, psi_full_avg10: float | None = None) -> ResourceStats:
    """ResourceStats at a memory ratio and/or CPU ratio (None: that resource has no limit)."""
    return ResourceStats(
        memory_bytes=int((memory or 0.0) * LIMIT), memory_limit=LIMIT if memory is not None else None,
        cpu_cores=cpu or 0.0, cpu_limit=1.0 if cpu is not None else None, oom_events=oom,
        psi_memory_full_total=psi_full_total, psi_memory_full=psi_full_avg10,
    )


def controller(clock: FakeClock, **settings: float) -> RateController:
    return RateController(ControllerSettings(**settings), clock=clock)


def tick(c: RateController, clock: FakeClock, s: ResourceStats, seconds: float = 1.0) -> ControllerState:
    clock.advance(seconds)
    return c.update(s)


# -- the documented step responses (docs/control.md, "Bounds") ------------------------------------------
BOUNDS = {
    # window: (settling s max, overshoot max, crossings max)
    "start (rate 0.1 up to balance)": (40.0, 0.06, 5),
    "load x2": (30.0, 0.20, 5),
    "load x0.5 (back to 1)": (30.0, 0.06, 5),
    "load x0.5 (down to 0.5)": (30.0, 0.06, 5),
}


def check(results: dict[str, list[StepResponse]], bounds: dict[str, tuple[float, float, int]]) -> None:
    for name, runs in results.items():
        settle_max, overshoot_max, crossings_max = bounds[name]
        for i, r in enumerate(runs):
            assert r.ooms == 0, (name, i, r)
            assert r.settling_time is not None and r.settling_time <= settle_max, (name, i, r)
            assert r.overshoot <= overshoot_max, (name, i, r)
            assert r.crossings <= crossings_max, (name, i, r)


def test_load_steps_on_the_nominal_plant() -> None:
    results = load_step_experiment(lambda clock: RateController(clock=clock),
                                   [PlantSettings(seed=s) for s in range(10)])
    check(results, BOUNDS)
    # the balance rates: 0.375 at load 1, 0.1875 at x2, 0.75 at x0.5 (within the dead-band's reach)
    means = {name: sum(r.mean_rate for r in runs) / len(runs) for name, runs in results.items()}
    assert means["load x2"] == pytest.approx(0.1875, rel=0.06)
    assert means["load x0.5 (down to 0.5)"] == pytest.approx(0.75, rel=0.06)


def test_load_steps_hold_over_a_range_of_plants() -> None:
    plants = [PlantSettings(seed=s, memory_tau=tau, delay=d) for s in range(2) for tau in (3.0, 5.0, 8.0)
              for d in (1, 2, 3) if (tau, d) != (3.0, 3)]
    results = load_step_experiment(lambda clock: RateController(clock=clock), plants)
    check(results, {"start (rate 0.1 up to balance)": (60.0, 0.08, 5), "load x2": (45.0, 0.30, 5),
                    "load x0.5 (back to 1)": (35.0, 0.06, 5), "load x0.5 (down to 0.5)": (35.0, 0.06, 5)})


def test_cpu_bound_plant_settles_at_the_cpu_setpoint() -> None:
    clock = FakeClock()
    plant = SimulatedPlant(PlantSettings(memory_gain=0.2, cpu_gain=1.6, seed=3), clock=clock)
    trace = simulate(RateController(clock=clock), plant, 120)
    assert trace[-1].state.resource == "cpu" and trace[-1].state.setpoint == 0.8
    r = step_response(trace, 0, 120, 0.8, resource="cpu")
    assert r.settling_time is not None and r.settling_time <= 30 and r.overshoot <= 0.06
    assert r.mean_rate == pytest.approx((0.8 - 0.05) / 1.6, rel=0.06)


# -- emergencies -----------------------------------------------------------------------------------------
def test_oom_counter_increase_halves_at_once_even_in_cooldown() -> None:
    clock = FakeClock()
    c = controller(clock, initial_rate=0.8)
    tick(c, clock, stats(0.70, oom=5))  # a counter already at 5 at start is history, not an emergency
    assert c.rate == pytest.approx(0.8)
    state = tick(c, clock, stats(0.70, oom=6))
    assert state.rate == pytest.approx(0.4)
    assert state.reason.startswith("emergency") and "OOM events +1" in state.reason
    state = tick(c, clock, stats(0.70, oom=6))  # no new OOM, inside the cooldown: hold
    assert state.rate == pytest.approx(0.4)
    state = tick(c, clock, stats(0.70, oom=8))  # a new OOM halves again, cooldown or not
    assert state.rate == pytest.approx(0.2) and "OOM events +2" in state.reason


def test_memory_at_90_percent_halves_with_cooldown() -> None:
    clock = FakeClock()
    c = controller(clock, initial_rate=0.6)
    tick(c, clock, stats(0.70))
    state = tick(c, clock, stats(0.93))  # raw, not smoothed: acts on the first sample
    assert state.rate == pytest.approx(0.3) and state.reason == "emergency: memory 93% >= 90%"
    for _ in range(3):  # still high during the cooldown (the cut has not shown yet): no second halving
        state = tick(c, clock, stats(0.92))
        assert state.rate == pytest.approx(0.3) and state.reason == "hold"
    state = tick(c, clock, stats(0.92))  # cooldown over, still above the line: halve again
    assert state.rate == pytest.approx(0.15) and state.reason.startswith("emergency")


def test_emergency_halving_stops_at_min_rate() -> None:
    clock = FakeClock()
    c = controller(clock, initial_rate=0.015)
    tick(c, clock, stats(0.5, oom=0))
    assert tick(c, clock, stats(0.5, oom=1)).rate == pytest.approx(0.01)


def test_psi_memory_full_spike() -> None:
    clock = FakeClock()
    c = controller(clock, initial_rate=0.5)
    assert not tick(c, clock, stats(0.7, psi_full_total=10_000_000)).reason.startswith("emergency")  # baseline
    assert not tick(c, clock, stats(0.7, psi_full_total=10_050_000)).reason.startswith("emergency")  # 5%
    state = tick(c, clock, stats(0.7, psi_full_total=10_300_000))  # 250 ms of 1 s: all tasks stalled
    assert state.reason.startswith("emergency: PSI memory full 25%") and state.rate == pytest.approx(0.25)


def test_psi_avg10_when_no_total_is_known() -> None:
    clock = FakeClock()
    c = controller(clock, initial_rate=0.5)
    state = tick(c, clock, stats(0.7, psi_full_avg10=30.0))
    assert state.reason == "emergency: PSI memory full avg10 30%" and state.rate == pytest.approx(0.25)


def test_emergency_on_the_plant_prevents_oom() -> None:
    """Load x2 on the nominal plant peaks above 0.90 within the dead time: the halving keeps it < 1."""
    clock = FakeClock()
    plant = SimulatedPlant(PlantSettings(seed=7), clock=clock)
    trace = simulate(RateController(clock=clock), plant, 200,
                     lambda k, p: setattr(p, "load", 2.0 if k >= 100 else 1.0))
    assert any(t.state.reason.startswith("emergency: memory") for t in trace[100:])
    assert plant.oom_events == 0 and max(t.memory for t in trace) < 1.0


# -- anti-windup ----------------------------------------------------------------------------------------
def test_long_saturation_at_min_rate_then_release_does_not_overshoot() -> None:
    """A neighbour holds 50% of the limit for 150 s: even 1% sampling is above the setpoint. When it
    goes, the rate climbs back without overshooting (the integrator did not wind up at the floor)."""
    clock = FakeClock()
    plant = SimulatedPlant(PlantSettings(seed=1), clock=clock)
    c = RateController(clock=clock)
    trace = simulate(c, plant, 300, lambda k, p: setattr(p, "memory_offset", 0.5 if k < 150 else 0.0))
    saturated = trace[100:150]
    assert all(t.rate <= 0.0125 for t in saturated), [t.rate for t in saturated]
    assert sum(t.rate == pytest.approx(0.01) for t in saturated) >= 40
    for t in saturated:  # the integrator tracks the applied output: P + I + D stays at ln(min_rate)
        assert t.state.p_term + t.state.i_term + t.state.d_term >= math.log(0.01) - 1e-9
        assert t.state.i_term > math.log(0.01) - 0.5
    after = trace[151:]
    assert max(t.memory for t in after) <= 0.70 * 1.05
    settled = next(i for i in range(len(after)) if all(abs(t.memory - 0.7) <= 0.035 for t in after[i:]))
    assert settled <= 60


def test_long_saturation_at_max_rate_then_load_cuts_at_once() -> None:
    """Light traffic keeps the rate at 1.0 for 100 s; when traffic grows the first cut comes as soon
    as the smoothed pressure leaves the dead-band, not after unwinding 100 s of integral."""
    clock = FakeClock()
    plant = SimulatedPlant(PlantSettings(seed=2), clock=clock)
    c = RateController(clock=clock)
    trace = simulate(c, plant, 200, lambda k, p: setattr(p, "load", 0.2 if k < 100 else 0.5))
    assert all(t.rate == 1.0 and t.state.reason == "clamp" for t in trace[40:100])
    first_out = next(k for k in range(100, 200) if trace[k].state.error > 0.02)
    assert trace[first_out].rate < 1.0
    r = step_response(trace, 100, 200, 0.7)
    assert r.settling_time is not None and r.settling_time <= 30 and r.ooms == 0


# -- slew limits, dead-band, clamp ------------------------------------------------------------------------
def test_slew_limits_hold_on_every_tick() -> None:
    clock = FakeClock()
    plant = SimulatedPlant(PlantSettings(seed=11, noise=0.02), clock=clock)
    s = ControllerSettings()
    rng = random.Random(5)

    def schedule(k: int, p: SimulatedPlant) -> None:
        if k % 40 == 0:
            p.load = rng.choice([0.3, 0.5, 1.0, 2.0, 2.5])

    trace = simulate(RateController(s, clock=clock), plant, 600, schedule)
    for before, after in itertools.pairwise(trace):
        change = after.rate - before.rate
        assert change <= s.raise_slew * 1.0 + 1e-9
        if not after.state.reason.startswith("emergency"):
            assert change >= -s.cut_slew * 1.0 - 1e-9
        assert s.min_rate - 1e-12 <= after.rate <= s.max_rate


def test_raise_is_slow_and_cut_is_fast() -> None:
    clock = FakeClock()
    c = controller(clock, initial_rate=0.1)
    rates = [tick(c, clock, stats(0.05)).rate for _ in range(30)]  # nearly idle: wants rate 1.0 at once
    assert rates[0] == pytest.approx(0.1 * math.exp(c.settings.ki * 0.65))  # bumpless: one tick of integral
    assert all(b - a <= 0.05 + 1e-9 for a, b in itertools.pairwise(rates))
    assert rates[-1] == 1.0  # 18 s from 0.1 to 1.0
    clock = FakeClock()
    c = controller(clock, initial_rate=1.0, kp=20.0, ewma_alpha=1.0)  # a PI that wants a deep cut
    tick(c, clock, stats(0.70))
    state = tick(c, clock, stats(0.78))  # above the setpoint, below the emergency lines
    assert state.reason == "slew" and state.rate == pytest.approx(0.5)  # 0.5/s: ten times the raise
    state = tick(c, clock, stats(0.78), seconds=0.5)  # the cut goes on; the allowance scales with time
    assert state.reason == "slew" and state.rate == pytest.approx(0.25)
    state = tick(c, clock, stats(0.78))
    assert state.reason == "pi" and 0.01 < state.rate < 0.25  # the PI's own target, reached


def test_deadband_holds_the_rate_under_noise() -> None:
    clock = FakeClock()
    c = controller(clock, initial_rate=0.4)
    rng = random.Random(1)
    states = [tick(c, clock, stats(0.7 + rng.uniform(-0.015, 0.015))) for _ in range(300)]
    assert {s.reason for s in states} == {"deadband"}
    assert {s.rate for s in states} == {0.4}
    other_clock = FakeClock()
    undamped = controller(other_clock, initial_rate=0.4, deadband=0.0)
    rng = random.Random(1)
    moved = {tick(undamped, other_clock, stats(0.7 + rng.uniform(-0.015, 0.015))).rate for _ in range(300)}
    assert len(moved) > 100  # without the dead-band the same noise moves the rate on every tick


def test_deadband_on_the_plant_keeps_the_rate_still_once_settled() -> None:
    clock = FakeClock()
    plant = SimulatedPlant(PlantSettings(seed=4), clock=clock)
    trace = simulate(RateController(clock=clock), plant, 300)
    late = trace[100:]
    changes = sum(1 for a, b in itertools.pairwise(late) if a.rate != b.rate)
    assert changes <= 20  # of 199 ticks; it moves only when noise pushes the EWMA out of the band
    assert sum(t.state.reason == "deadband" for t in late) >= 150


def test_no_limit_raises_to_max_and_clamp_reports_it() -> None:
    clock = FakeClock()
    c = controller(clock)
    states = [tick(c, clock, stats()) for _ in range(25)]
    assert states[-1].rate == 1.0 and states[-1].reason == "no-limit" and states[-1].resource == ""
    states = [tick(c, clock, stats(0.2)) for _ in range(3)]
    assert states[-1].reason == "clamp" and states[-1].rate == 1.0


def test_binding_resource_is_the_one_with_less_headroom() -> None:
    clock = FakeClock()
    c = controller(clock, ewma_alpha=1.0)
    state = tick(c, clock, stats(0.60, cpu=0.75))  # headroom: memory 0.10, cpu 0.05
    assert (state.resource, state.setpoint) == ("cpu", 0.8)
    assert state.error == pytest.approx(-0.05) and state.measured == pytest.approx(0.75)
    state = tick(c, clock, stats(0.69, cpu=0.75))
    assert state.resource == "memory"


def test_ewma_smooths_the_input() -> None:
    clock = FakeClock()
    c = controller(clock, ewma_alpha=0.5)
    assert tick(c, clock, stats(0.4)).pressure == pytest.approx(0.4)  # first sample taken as is
    state = tick(c, clock, stats(0.6))
    assert state.pressure == pytest.approx(0.5) and state.measured == pytest.approx(0.6)
    state = tick(c, clock, stats(0.6), seconds=2.0)  # two ticks' worth of weight: 1 - 0.5^2
    assert state.pressure == pytest.approx(0.5 + 0.75 * 0.1)


def test_first_tick_is_bumpless_and_a_late_tick_is_bounded() -> None:
    clock = FakeClock()
    c = controller(clock, initial_rate=0.2)
    first = tick(c, clock, stats(0.5))
    assert first.rate == pytest.approx(0.2 * math.exp(c.settings.ki * 0.2))  # only one tick of integral
    before = c.rate
    late = tick(c, clock, stats(0.5), seconds=600)  # the process was stopped for 10 minutes
    assert late.rate <= before + 0.05 * 5 + 1e-9  # at most 5 ticks' worth of raise


def test_derivative_on_measurement() -> None:
    clock = FakeClock()
    c = controller(clock, kd=2.0, ewma_alpha=1.0)
    tick(c, clock, stats(0.60))
    state = tick(c, clock, stats(0.65))  # rising 0.05/s: the D term brakes before the error changes sign
    assert state.d_term == pytest.approx(-0.1)


@pytest.mark.parametrize("bad", [
    {"min_rate": 0.0}, {"initial_rate": 0.001}, {"max_rate": 1.5}, {"ewma_alpha": 0.0}, {"kp": -1.0},
    {"setpoint_memory": 1.2}, {"raise_slew": 0.0}, {"tick": 0.0},
])
def test_bad_settings(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RateController(ControllerSettings(**bad))


# -- kernel drops below the CPU emergency line ---------------------------------------------------------
def _ticks(controller: RateController, clock: FakeClock,
           readings: list[tuple[float, int, int]]) -> list[ControllerState]:
    """One update per second at (CPU ratio, cumulative kernel drops, cumulative packets the filter
    passed), memory well below its setpoint (so, without drops, the rate would rise)."""
    out = []
    for cpu, drops, passed in readings:
        clock.advance(1.0)
        reading = stats(memory=0.40, cpu=cpu)
        reading.kernel_drops, reading.kernel_received = drops, passed
        out.append(controller.update(reading))
    return out


def test_a_drop_streak_under_the_cpu_quota_is_an_emergency() -> None:
    """The ring overflows tick after tick at 75 % of the CPU quota (CFS throttling bursts): the rate
    is held while it drops, the third tick in a row halves it (an emergency: the pipeline sheds the
    highest-hash live flows, since only that brings the kernel's ceiling and the load down), then the
    cooldown holds it, and it rises again once the drops stop."""
    clock = FakeClock()
    c = RateController(ControllerSettings(initial_rate=0.5, setpoint_cpu=0.9), clock=clock)
    k = 100_000  # packets the filter passes a tick
    states = _ticks(c, clock, [(0.75, 0, k), (0.75, 500, 2 * k), (0.75, 1000, 3 * k), (0.75, 1500, 4 * k)])
    rates = [s.rate for s in states]
    assert rates[1] == rates[2] == rates[0] and states[1].reason == "hold: kernel drops"
    assert rates[3] == pytest.approx(rates[2] / 2)
    assert states[3].reason == "emergency: kernel drops 3 ticks in a row (500 of 100000 this tick)"
    calm = _ticks(c, clock, [(0.50, 1500, (5 + i) * k) for i in range(30)])
    assert calm[0].reason == "hold"
    assert calm[-1].rate > rates[3], "no new drops and CPU headroom: the rate rises again"


def test_light_or_isolated_drops_hold_but_never_cut() -> None:
    """A few packets now and then (under 0.1 % of what the filter passed), or drops in ticks that are
    not in a row: the rate stops rising while they happen and is never cut for them."""
    clock = FakeClock()
    c = RateController(ControllerSettings(initial_rate=0.3), clock=clock)
    k = 100_000
    light = [(0.3, 5 * i, k * i) for i in range(1, 8)]  # 5 of 100,000 every tick
    states = _ticks(c, clock, light)
    assert all(s.reason == "hold: kernel drops" and s.rate == states[0].rate for s in states[1:])
    spaced = [(0.3, 1000 * (i // 2 + 1), k * (i + 8)) for i in range(8)]  # heavy drops every other tick
    assert not any(s.reason.startswith("emergency") for s in _ticks(c, clock, spaced))


def test_drop_rule_can_be_turned_off() -> None:
    clock = FakeClock()
    c = RateController(ControllerSettings(initial_rate=0.5, drop_ticks=0), clock=clock)
    states = _ticks(c, clock, [(0.75, i * 1000, i * 10_000) for i in range(6)])
    assert all(s.rate >= 0.5 for s in states)
    assert not any(s.reason.startswith(("emergency", "hold")) for s in states)
    with pytest.raises(ValueError):
        ControllerSettings(drop_share=1.0).validate()


def test_a_cpu_and_drops_halving_is_held_two_seconds_a_memory_one_four() -> None:
    """After a halving for CPU at the quota with drops, drops still coming 2 s later halve again (the
    shed shows within two ticks); after a memory halving the rate is held the full 4 s."""
    clock = FakeClock()
    c = RateController(ControllerSettings(initial_rate=0.8), clock=clock)
    k = 100_000
    states = _ticks(c, clock, [(0.95, 0, k), (0.95, 5000, 2 * k), (0.95, 9000, 3 * k), (0.95, 12000, 4 * k)])
    assert [s.reason.split(":")[0] for s in states] == ["pi", "emergency", "hold", "emergency"]
    assert states[3].rate == pytest.approx(states[1].rate / 2)

    clock2 = FakeClock()
    m = RateController(ControllerSettings(initial_rate=0.8), clock=clock2)
    reasons = []
    for memory in (0.5, 0.93, 0.93, 0.93, 0.93, 0.93):
        clock2.advance(1.0)
        reasons.append(m.update(stats(memory=memory)).reason.split(":")[0])
    assert reasons == ["pi", "emergency", "hold", "hold", "hold", "emergency"]
