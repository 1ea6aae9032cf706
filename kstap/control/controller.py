"""The auto-mode rate controller: a PI(D) loop on the sampling rate, run about once a second.

Each :meth:`RateController.update` takes one :class:`~kstap.model.ResourceStats` and returns a
:class:`~kstap.model.ControllerState`; the rate in it is what the sampler should use next.

The loop acts on ``u = ln(rate)``, not on the rate itself. The resource a sampled flow costs is
roughly proportional to the rate times the traffic, so d(pressure)/d(rate) grows as traffic grows;
d(pressure)/d(ln rate) = rate · d(pressure)/d(rate) is the sampled part of the pressure, which sits
near the setpoint whatever the traffic. One set of gains then holds for load x2 and x0.5, and for
rates from 1 down to 0.01. docs/control.md gives the equations and the tuning.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from kstap.control.pressure import cpu_ratio, memory_ratio
from kstap.model import ControllerState, ResourceStats
from kstap.vocabulary import Cause


@dataclass
class ControllerSettings:
    """Gains and limits of :class:`RateController`. Pressures are ratios (0..1) of a limit."""

    setpoint_memory: float = 0.70
    """Target working set / memory limit. The 30% headroom is for the climb during the dead time after
    a sudden traffic doubling: on the simulated plant memory peaks at 0.95 before the cut shows (and
    the emergency halving fires); a higher setpoint turns that peak into an OOM kill."""
    setpoint_cpu: float = 0.80
    """Target CPU use / CPU quota. CPU has no OOM cliff (the kernel throttles, it does not kill), so
    less headroom than memory; the 20% left absorbs bursts before throttling delays the capture loop
    and the ring starts to drop."""
    kp: float = 1.5
    """Proportional gain, ln(rate) per unit of headroom (setpoint - pressure; 0.1 → rate x1.16). Chosen on the
    simulated plant as the largest gain that stays stable over flow lives of 1-10 s, dead times of 1-3
    ticks and loop gains up to 0.75 (a worker whose baseline is 5% of its limit); 3.0 settles ~25%
    faster on the nominal plant but limit-cycles on fast, high-gain ones (docs/control.md)."""
    ki: float = 0.3
    """Integral gain, ln(rate) per unit of headroom per second: ki/kp = 1/(5 s), the nominal flow life,
    so the integral's zero cancels the plant's lag."""
    kd: float = 0.0
    """Derivative gain on the measurement, ln(rate) per (unit pressure / second). 0: with 1% noise and
    2 ticks of dead time it bought no settling time on the plant, only rate jitter."""
    ewma_alpha: float = 0.5
    """Weight of the newest sample in the pressure's EWMA per tick (time constant ≈ 1.4 ticks).
    Cuts the noise to 0.58 of its sigma (sqrt(alpha/(2-alpha))) for about one tick of extra lag."""
    min_rate: float = 0.01
    """Lowest rate auto mode uses: 1% keeps every node sampling some flows, so estimates stay possible."""
    max_rate: float = 1.0
    initial_rate: float = 0.10
    """Rate of the first tick. Start low and raise slowly: a full-rate start is what OOM-kills a worker."""
    raise_slew: float = 0.05
    """Largest rise of the rate per second (0.1 → 1 takes 18 s): new flows cost memory for their whole
    life, so a rise shows up over several seconds; going up slowly keeps the dead time from overshooting."""
    cut_slew: float = 0.5
    """Largest cut of the rate per second: cuts are safe, so they may be fast."""
    deadband: float = 0.02
    """|pressure - setpoint| below this holds the rate (pressure units). About 3x the smoothed noise of a
    1% sigma signal, and inside the ±5% settling band (±0.035 at 0.70), so noise does not move the rate."""
    emergency_cpu: float = 0.90
    """CPU use / quota at or above which new kernel drops make an emergency (the ring overflows
    because user space is throttled: only shedding live flows helps)."""
    emergency_memory: float = 0.90
    """Raw memory ratio at which the rate is halved at once (no smoothing, no slew limit)."""
    psi_full_spike: float = 0.10
    """PSI memory 'full' stall fraction over one tick (growth of ``total``) that counts as an emergency:
    all tasks stalled on memory 10% of the time means reclaim is thrashing."""
    psi_full_avg10: float = 10.0
    """The same, in percent of PSI ``avg10``, used when no ``total`` counter is known."""
    emergency_horizon: float = 3.0
    """Seconds ahead to extrapolate the raw memory ratio's rise over the last tick: if, from halfway
    between the setpoint and the emergency line (0.80), it would reach the limit (1.0) within this
    horizon, halve now instead of waiting for 0.90. It covers the dead time (a cut shows 2-3 ticks
    later) when memory climbs fast; starting at 0.80 keeps noise from firing it. 0 turns it off."""
    emergency_cooldown: float = 4.0
    """Seconds after a halving during which the rate is held: the halving needs the dead time plus
    about a time constant to show; cutting more meanwhile undershoots. An OOM counter increase still
    halves again at once."""
    drop_cooldown: float = 2.0
    """The hold after a halving whose causes are all CPU or kernel drops (no memory sign): the shed
    lowers the kernel's ceiling one tick later, so its effect on the drops shows within two ticks,
    while memory needs the dead time plus a time constant (:attr:`emergency_cooldown`). Holding 4 s
    there let the ring overflow for two more ticks after each halving under a CPU quota."""
    drop_ticks: int = 3
    """Consecutive ticks in which the kernel dropped at least :attr:`drop_share` of what its filter
    passed that make an emergency (halve and shed) even below :attr:`emergency_cpu`: the ring
    overflowing tick after tick means user space does not keep up with what the filter admits (CFS
    throttling stops the process for part of every period, so bursts overflow the ring at a mean CPU
    use well under the quota). Cutting the rate alone would not help: live flows keep the kernel's
    ceiling up, so the load stays; shedding the highest-hash flows brings it down. Any tick with new
    drops holds the rate from rising. 0 turns both off."""
    drop_share: float = 0.001
    """Dropped / passed by the filter over one tick at or above which a tick counts in the streak."""
    tick: float = 1.0
    """Nominal seconds between updates; the EWMA weight and the slew limits scale with the real interval."""

    def validate(self) -> None:
        """Reject settings the loop cannot run with (ValueError)."""
        if not 0 < self.min_rate <= self.initial_rate <= self.max_rate <= 1:
            raise ValueError("need 0 < min_rate <= initial_rate <= max_rate <= 1")
        for name in ("setpoint_memory", "setpoint_cpu", "emergency_memory"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")
        if self.setpoint_memory >= self.emergency_memory:
            raise ValueError("setpoint_memory must be below emergency_memory")
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError("ewma_alpha must be in (0, 1]")
        if min(self.kp, self.ki, self.kd, self.deadband, self.emergency_cooldown, self.drop_cooldown,
               self.emergency_horizon) < 0:
            raise ValueError("gains, dead-band and cooldown must not be negative")
        if not (self.raise_slew > 0 and self.cut_slew > 0 and self.tick > 0):
            raise ValueError("slew limits and tick must be positive")
        if self.drop_ticks < 0 or not 0 <= self.drop_share < 1:
            raise ValueError("drop_ticks must not be negative and drop_share must be in [0, 1)")


class RateController:
    """PI(D) on ln(rate) with EWMA input, anti-windup, slew limits, dead-band and emergency halving."""

    def __init__(self, settings: ControllerSettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or ControllerSettings()
        self.settings.validate()
        self.clock = clock
        self._rate = self.settings.initial_rate
        self._integral = math.log(self._rate)
        self._last_time: float | None = None
        self._smoothed: dict[str, float] = {}
        self._last_oom: int | None = None
        self._last_psi_total: int | None = None
        self._last_emergency = -math.inf
        self._cooldown = self.settings.emergency_cooldown
        """The hold after the last halving (by its causes: memory's or drops')."""
        self._last_memory: float | None = None
        self._last_drops: int | None = None
        self._drop_streak = 0
        self._last_received: int | None = None

    @property
    def rate(self) -> float:
        """The rate in force (what the last update returned)."""
        return self._rate

    # -- one tick --------------------------------------------------------------------------------
    def update(self, stats: ResourceStats) -> ControllerState:
        s = self.settings
        now = self.clock()
        first = self._last_time is None
        elapsed = s.tick if self._last_time is None else now - self._last_time
        self._last_time = now
        dt = min(max(elapsed, 0.05 * s.tick), 5 * s.tick)  # a late tick must not integrate minutes

        raw = {"memory": memory_ratio(stats), "cpu": cpu_ratio(stats)}
        setpoints = {"memory": s.setpoint_memory, "cpu": s.setpoint_cpu}
        previous = dict(self._smoothed)
        weight = 1 - (1 - s.ewma_alpha) ** (dt / s.tick)
        for name, value in raw.items():
            if value is None:
                self._smoothed.pop(name, None)
            else:
                old = self._smoothed.get(name)
                self._smoothed[name] = value if old is None else old + weight * (value - old)

        new_drops = 0 if self._last_drops is None else max(0, stats.kernel_drops - self._last_drops)
        passed = 0 if self._last_received is None else max(0, stats.kernel_received - self._last_received)
        self._last_received = stats.kernel_received
        heavy = new_drops > 0 and new_drops >= s.drop_share * passed
        self._drop_streak = self._drop_streak + 1 if heavy else 0
        causes, oom_increase = self._emergency_causes(stats, raw["memory"], elapsed)
        if s.drop_ticks and self._drop_streak >= s.drop_ticks and not any(c.startswith("cpu") for c in causes):
            causes.append(f"kernel drops {self._drop_streak} ticks in a row ({new_drops} of {passed} this tick)")
        rate_before = self._rate
        detail = ""
        u_before = math.log(rate_before)
        state = ControllerState(setpoint=s.setpoint_memory)

        if self._smoothed:
            # headroom = setpoint - pressure (the e of r - y); the binding resource has the least
            headroom, resource = min((setpoints[n] - v, n) for n, v in self._smoothed.items())
            state.resource, state.error = resource, -headroom
            state.pressure, state.setpoint = self._smoothed[resource], setpoints[resource]
            state.measured = raw[resource] or 0.0
            p_term = s.kp * headroom
            old = previous.get(resource)
            d_term = -s.kd * (self._smoothed[resource] - old) / dt if old is not None and s.kd else 0.0
            if first:
                self._integral = u_before - p_term - d_term  # bumpless start at initial_rate
            if abs(headroom) < s.deadband:
                i_term, u_raw, cause = u_before - p_term - d_term, u_before, Cause.DEADBAND
            else:
                i_term = self._integral + s.ki * headroom * dt
                # conditional integration: integrate only up to the limit the headroom pushes towards
                top, bottom = math.log(s.max_rate) - p_term - d_term, math.log(s.min_rate) - p_term - d_term
                if headroom > 0 and i_term > top:
                    i_term = max(self._integral, top)
                elif headroom < 0 and i_term < bottom:
                    i_term = min(self._integral, bottom)
                u_raw = p_term + i_term + d_term
                cause = Cause.PI
            target = math.exp(u_raw)
        else:
            p_term = i_term = d_term = 0.0
            u_raw, target, cause = math.log(s.max_rate), s.max_rate, Cause.NO_LIMIT

        if target >= s.max_rate * (1 - 1e-9) or target <= s.min_rate * (1 + 1e-9):
            target = min(max(target, s.min_rate), s.max_rate)
            cause = Cause.CLAMP if cause is Cause.PI else cause
        rate = self._slew(rate_before, target, dt)
        if rate != target and cause is Cause.PI:
            cause = Cause.SLEW

        cooling = now - self._last_emergency < self._cooldown
        if causes and (oom_increase or not cooling):
            rate = max(s.min_rate, rate_before / 2)
            cause, detail = Cause.EMERGENCY, ", ".join(causes)
            self._last_emergency = now
            cpu_only = all(c.startswith(("cpu", "kernel drops")) for c in causes)
            self._cooldown = s.drop_cooldown if cpu_only else s.emergency_cooldown
            self._drop_streak = 0  # the halving and shed need a tick or two to show: count afresh
        elif cooling and rate != rate_before:
            rate, cause = rate_before, Cause.HOLD
        elif new_drops and s.drop_ticks and rate > rate_before:
            rate, cause = rate_before, Cause.HOLD_DROPS

        # back-calculation: the integrator tracks the rate actually applied, so clamps, the raise slew
        # limit, holds and halvings never wind it up (and a release does not overshoot). A cut held back
        # by the cut slew limit keeps its integral, so the cut goes on next tick.
        u_applied = math.log(rate)
        cut_by_slew = cause is Cause.SLEW and rate < rate_before
        if abs(u_applied - u_raw) > 1e-12 and not cut_by_slew:
            i_term = u_applied - p_term - d_term
        self._integral = i_term
        self._rate = rate
        state.p_term, state.i_term, state.d_term = p_term, i_term, d_term
        state.rate, state.cause = rate, cause
        state.reason = f"{cause.value}: {detail}" if detail else cause.value
        return state

    def _slew(self, before: float, target: float, dt: float) -> float:
        s = self.settings
        if target > before:
            return min(target, before + s.raise_slew * dt)
        return max(target, before - s.cut_slew * dt)

    def _emergency_causes(self, stats: ResourceStats, memory: float | None,
                          elapsed: float) -> tuple[list[str], bool]:
        """Why this tick is an emergency (empty if it is not), and whether an OOM counter grew."""
        s = self.settings
        causes = []
        oom_increase = self._last_oom is not None and stats.oom_events > self._last_oom
        if oom_increase:
            causes.append(f"OOM events +{stats.oom_events - (self._last_oom or 0)}")
        self._last_oom = stats.oom_events
        if memory is not None and memory >= s.emergency_memory:
            causes.append(f"memory {memory:.0%} >= {s.emergency_memory:.0%}")
        elif (memory is not None and self._last_memory is not None
              and memory >= (s.setpoint_memory + s.emergency_memory) / 2):
            rise = (memory - self._last_memory) / max(elapsed, 1e-3)
            if s.emergency_horizon > 0 and memory + rise * s.emergency_horizon >= 1.0:
                causes.append(f"memory {memory:.0%} rising {rise:.0%}/s")
        self._last_memory = memory
        total = stats.psi_memory_full_total
        if total is not None and self._last_psi_total is not None and total >= self._last_psi_total:
            stalled = (total - self._last_psi_total) / 1e6 / max(elapsed, 1e-3)
            if stalled >= s.psi_full_spike:
                causes.append(f"PSI memory full {stalled:.0%} of the last {elapsed:.1f} s")
        elif total is None and stats.psi_memory_full is not None and stats.psi_memory_full >= s.psi_full_avg10:
            causes.append(f"PSI memory full avg10 {stats.psi_memory_full:.0f}%")
        self._last_psi_total = total
        # CPU: the ring overflowing while the process is at its quota means user space cannot keep
        # up with what the kernel already admitted. Lowering the rate only stops new flows, so live
        # flows must be shed, as for memory.
        cpu = cpu_ratio(stats)
        drops = stats.kernel_drops
        if (self._last_drops is not None and drops > self._last_drops and cpu is not None
                and cpu >= s.emergency_cpu):
            causes.append(f"cpu {cpu:.0%} of quota with {drops - self._last_drops} kernel drops")
        self._last_drops = drops
        return causes, oom_increase
