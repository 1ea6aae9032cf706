"""A simulated plant for the rate controller: tests and ``kstap tune`` dry runs.

Memory and CPU pressure follow the sampling rate as first-order lags with dead time::

    pressure_ss = base + gain · load · rate(t - delay)
    pressure   += (pressure_ss - pressure) · (1 - e^(-tick/τ))

plus seeded Gaussian measurement noise. Memory's τ is the life of a sampled flow (a flow admitted
now costs memory until it ends, so the working set trails the rate by seconds); CPU's τ is short.
At ``oom_at`` the worker is OOM-killed: the OOM counter grows and memory falls back to ``base``.
CPU cannot exceed the quota (the kernel throttles instead), so its ratio is capped at 1.
Above 95% memory, PSI 'full' stall time accumulates.

:func:`simulate` runs a controller against a plant on a :class:`FakeClock`; :func:`step_response`
measures settling time, overshoot and oscillation after a load step.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kstap.model import ControllerState, ResourceStats
from kstap.vocabulary import Cause

MIB = 1 << 20


class FakeClock:
    """A clock for tests: ``clock()`` returns the time, ``advance(seconds)`` moves it. Never sleeps."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class PlantSettings:
    """The simulated worker. Pressures are ratios of the limits; ``load`` multiplies both gains."""

    memory_base: float = 0.25
    """Working set / limit at rate 0 (interpreter, rings, buffers): 50 MiB of a 200 MiB limit."""
    memory_gain: float = 1.2
    """Memory pressure added by rate 1 at load 1: full rate needs 1.45x the limit (OOM), the balance
    point of setpoint 0.70 is rate 0.375 (0.1875 at load x2, 0.75 at load x0.5)."""
    memory_tau: float = 5.0
    """Seconds: mean life of a sampled flow, so the lag of memory behind the rate."""
    cpu_base: float = 0.05
    """CPU use / quota at rate 0 (an idle worker)."""
    cpu_gain: float = 0.5
    """CPU use added by rate 1 at load 1. CPU never exceeds the quota (1.0): the kernel throttles."""
    cpu_tau: float = 1.0
    """Seconds. Shorter than memory's: per-packet work stops with the packets (harder for the loop)."""
    delay: int = 2
    """Ticks between a new rate and its first effect (filter swap, flows already in flight, reading lag)."""
    noise: float = 0.01
    """sigma of the Gaussian noise added to each measured ratio."""
    memory_limit: int = 200 * MIB
    cpu_limit: float = 1.0
    """Cores."""
    oom_at: float = 1.0
    """Memory ratio at which the worker is OOM-killed."""
    tick: float = 1.0
    seed: int = 0


class SimulatedPlant:
    """State: true memory and CPU pressure; :meth:`step` applies one tick of a rate and measures."""

    def __init__(self, settings: PlantSettings | None = None, *, clock: FakeClock | None = None,
                 initial_rate: float = 0.1) -> None:
        self.settings = settings or PlantSettings()
        self.clock = clock or FakeClock()
        self.load = 1.0
        """Traffic multiplier (load x2 doubles what each unit of rate costs)."""
        self.memory_offset = 0.0
        """Extra memory pressure from outside the sampled flows (a sibling eating the pod's limit)."""
        self._random = random.Random(self.settings.seed)
        s = self.settings
        self.memory = s.memory_base + s.memory_gain * self.load * initial_rate
        self.cpu = s.cpu_base + s.cpu_gain * self.load * initial_rate
        self.oom_events = 0
        self.psi_full_total = 0
        self._in_flight: deque[float] = deque([initial_rate] * s.delay)

    def _settle(self, value: float, target: float, tau: float) -> float:
        return target + (value - target) * math.exp(-self.settings.tick / tau)

    def step(self, rate: float) -> ResourceStats:
        """Run one tick with ``rate`` as the new sampling rate; advance the clock; measure."""
        s = self.settings
        self._in_flight.append(rate)
        effective = self._in_flight.popleft()
        memory_ss = s.memory_base + self.memory_offset + s.memory_gain * self.load * effective
        self.memory = self._settle(self.memory, memory_ss, s.memory_tau)
        demand = s.cpu_base + s.cpu_gain * self.load * effective
        self.cpu = min(1.0, self._settle(self.cpu, demand, s.cpu_tau))  # the quota caps it: CFS throttles
        if self.memory > 0.95:
            self.psi_full_total += int(min(1.0, (self.memory - 0.95) / 0.05) * s.tick * 1e6)
        if self.memory >= s.oom_at:
            self.oom_events += 1
            self.memory = s.memory_base + self.memory_offset
        self.clock.advance(s.tick)
        return self.measure()

    def measure(self) -> ResourceStats:
        """What a PressureReader would report now (noisy)."""
        s = self.settings
        memory = max(0.0, self.memory + self._random.gauss(0.0, s.noise))
        cpu = max(0.0, self.cpu + self._random.gauss(0.0, s.noise))
        return ResourceStats(
            memory_bytes=int(memory * s.memory_limit), memory_limit=s.memory_limit,
            cpu_cores=cpu * s.cpu_limit, cpu_limit=s.cpu_limit, oom_events=self.oom_events,
            psi_memory_full_total=self.psi_full_total, source="simulated plant",
        )


class Controller(Protocol):
    def update(self, stats: ResourceStats) -> ControllerState: ...


@dataclass(frozen=True)
class Tick:
    """One tick of a closed-loop run (true, noise-free pressures)."""

    time: float
    load: float
    rate: float
    memory: float
    cpu: float
    state: ControllerState
    oom_events: int = 0
    """The plant's OOM counter before this tick's step."""


def simulate(controller: Controller, plant: SimulatedPlant, ticks: int,
             schedule: Callable[[int, SimulatedPlant], None] | None = None) -> list[Tick]:
    """Run ``ticks`` ticks: measure → controller.update → plant.step(rate).

    ``schedule(tick, plant)`` may change ``plant.load`` / ``plant.memory_offset`` before each tick.
    The controller must use ``plant.clock``.
    """
    trace = []
    stats = plant.measure()
    for k in range(ticks):
        if schedule is not None:
            schedule(k, plant)
        state = controller.update(stats)
        trace.append(Tick(plant.clock(), plant.load, state.rate, plant.memory, plant.cpu, state, plant.oom_events))
        stats = plant.step(state.rate)
    return trace


def load_steps(steps: dict[int, float]) -> Callable[[int, SimulatedPlant], None]:
    """A schedule multiplying the load by ``factor`` at each ``tick``: ``{100: 2.0, 200: 0.5}``."""

    def schedule(k: int, plant: SimulatedPlant) -> None:
        if k in steps:
            plant.load *= steps[k]

    return schedule


@dataclass(frozen=True)
class StepResponse:
    """How the true pressure answered one step. Times in seconds after the step."""

    settling_time: float | None
    """Until the pressure stays within ±band x setpoint for the rest of the window (None: never)."""
    overshoot: float
    """Largest excursion past the setpoint on the far side, after the first return, ÷ setpoint."""
    peak: float
    """Largest |pressure - setpoint| ÷ setpoint after the step (the disturbance's own peak)."""
    crossings: int
    """Setpoint crossings after settling (oscillation): moves from more than ``hysteresis`` x setpoint
    on one side to more than that on the other."""
    mean_rate: float
    """Mean rate once settled (or over the window)."""
    ooms: int
    """OOM kills in the window."""
    emergencies: int = 0
    """Emergency halvings in the window."""
    samples: list[float] = field(default_factory=list, repr=False)


def step_response(trace: Sequence[Tick], start: int, end: int, setpoint: float, *, band: float = 0.05,
                  hysteresis: float = 0.01, resource: str = "memory") -> StepResponse:
    """Measure ticks ``start``..``end`` (exclusive) of ``trace`` against ``setpoint``.

    ``band`` is the settling tolerance and ``hysteresis`` the margin a crossing must clear on each
    side, both as fractions of the setpoint (0.05 → ±0.035 at 0.70; 0.01 → ±0.007).
    """
    window = list(trace[start:end])
    values = [t.memory if resource == "memory" else t.cpu for t in window]
    tolerance = band * setpoint
    settled_at: int | None = None
    for i in range(len(values)):
        if all(abs(v - setpoint) <= tolerance for v in values[i:]):
            settled_at = i
            break
    # the step's direction: the first excursion out of the band
    direction = 0
    for v in values:
        if abs(v - setpoint) > tolerance:
            direction = 1 if v > setpoint else -1
            break
    overshoot = 0.0
    if direction:
        returned = next((i for i, v in enumerate(values) if (v - setpoint) * direction <= 0), None)
        if returned is not None:
            overshoot = max(0.0, max((setpoint - v) * direction for v in values[returned:]) / setpoint)
    peak = max((abs(v - setpoint) for v in values), default=0.0) / setpoint
    crossings = 0
    side = 0
    for v in values[settled_at:] if settled_at is not None else []:
        now = 1 if v > setpoint + hysteresis * setpoint else -1 if v < setpoint - hysteresis * setpoint else 0
        if now:
            crossings += side != 0 and now != side
            side = now
    rates = [t.rate for t in window[settled_at or 0:]]
    ooms = trace[min(end, len(trace)) - 1].oom_events - window[0].oom_events if window else 0
    return StepResponse(
        settling_time=None if settled_at is None else window[settled_at].time - window[0].time,
        overshoot=overshoot, peak=peak, crossings=crossings, mean_rate=sum(rates) / len(rates) if rates else 0.0,
        ooms=ooms, emergencies=sum(1 for t in window if t.state.cause is Cause.EMERGENCY),
        samples=values,
    )


# -- the documented experiment: load steps x2 and x0.5 (docs/control.md) ------------------------------
STEPS = {100: 2.0, 200: 0.5, 300: 0.5}
"""Load x2 at t=100 s, x0.5 at 200 s (back to 1), x0.5 at 300 s (to 0.5); 100 s windows."""
WINDOWS = (("start (rate 0.1 up to balance)", 0), ("load x2", 100), ("load x0.5 (back to 1)", 200),
           ("load x0.5 (down to 0.5)", 300))


def load_step_experiment(make_controller: Callable[[FakeClock], Controller], plants: Sequence[PlantSettings],
                         setpoint: float = 0.70, resource: str = "memory") -> dict[str, list[StepResponse]]:
    """Run the documented load steps on each plant; the step responses (of ``resource``) by window."""
    out: dict[str, list[StepResponse]] = {name: [] for name, _ in WINDOWS}
    for settings in plants:
        clock = FakeClock()
        plant = SimulatedPlant(settings, clock=clock)
        trace = simulate(make_controller(clock), plant, 400, load_steps(STEPS))
        for name, start in WINDOWS:
            out[name].append(step_response(trace, start, start + 100, setpoint, resource=resource))
    return out


def markdown_table(results: dict[str, list[StepResponse]]) -> str:
    """Settling time, overshoot, peak, crossings, emergencies and OOMs per window, over all runs."""
    lines = ["| step | settling s (mean / max) | overshoot (mean / max) | peak | crossings (max) "
             "| emergencies | OOM kills | mean rate |",
             "|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        settled = [r.settling_time for r in runs if r.settling_time is not None]
        never = len(runs) - len(settled)
        settle = (f"{sum(settled) / len(settled):.1f} / {max(settled):.0f}" if settled else "-") + (
            f" ({never} never)" if never else "")
        lines.append(
            f"| {name} | {settle} | {sum(r.overshoot for r in runs) / len(runs):.1%} / "
            f"{max(r.overshoot for r in runs):.1%} | {max(r.peak for r in runs):.1%} | "
            f"{max(r.crossings for r in runs)} | {sum(r.emergencies for r in runs)} | {sum(r.ooms for r in runs)} | "
            f"{sum(r.mean_rate for r in runs) / len(runs):.3f} |")
    return "\n".join(lines)


def main() -> None:
    """``python -m kstap.control.plant``: the figures of docs/control.md, with the default settings."""
    from kstap.control.controller import RateController

    def make(clock: FakeClock) -> Controller:
        return RateController(clock=clock)

    cases = {
        "nominal plant (tau 5 s, dead time 2 ticks, noise 0.01), 20 seeds":
            [PlantSettings(seed=s) for s in range(20)],
        "robustness: tau 3/5/8 s x dead time 1/2/3 ticks (not tau 3 with 3), 5 seeds each":
            [PlantSettings(seed=s, memory_tau=tau, delay=d) for s in range(5) for tau in (3.0, 5.0, 8.0)
             for d in (1, 2, 3) if (tau, d) != (3.0, 3)],
        "noise 0.02 (twice the nominal), 20 seeds": [PlantSettings(seed=s, noise=0.02) for s in range(20)],
        "CPU-bound (CPU tau 1 s, CPU balance rate 0.375, dead time 1/2/3 ticks), 5 seeds each, CPU figures":
            [PlantSettings(seed=s, memory_gain=0.2, cpu_gain=2.0, delay=d) for s in range(5) for d in (1, 2, 3)],
    }
    for title, plants in cases.items():
        print(f"\n{title}\n")
        cpu = title.startswith("CPU")
        print(markdown_table(load_step_experiment(make, plants, setpoint=0.80 if cpu else 0.70,
                                                  resource="cpu" if cpu else "memory")))


if __name__ == "__main__":
    main()
