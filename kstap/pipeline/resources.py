"""Resource watching and alerts: the memory water level, OOM kills and kernel drops, as alerts.

In auto mode the governor reads the pressure (and this module only records what it saw); in the
other modes the figures are still read here, for the water level and the alerts.
"""

from __future__ import annotations

from collections.abc import Callable

from kstap.config import SamplingSettings
from kstap.contracts import AlertRaised, PressureReaderLike, Reporter
from kstap.model import Alert, ResourceStats
from kstap.vocabulary import AlertLevel

MEMORY_WARN = 0.70
MEMORY_CRITICAL = 0.90
"""Memory water-level alert thresholds (fractions of the limit): the controller's setpoint and its
emergency level, so an alert means the same thing in every mode."""


class ResourceWatch:
    """The latest resource figures, the memory history and the alerts raised so far."""

    def __init__(self, sampling: SamplingSettings, reporter: Reporter, clock: Callable[[], float]) -> None:
        self.sampling = sampling
        self.reporter = reporter
        self.clock = clock
        self.started = clock()
        """When the capture started (``clock`` seconds): alerts are stamped relative to it."""
        self.watcher: PressureReaderLike | None = None
        self.resources: ResourceStats | None = None
        self.memory_history: list[tuple[float, float]] = []
        self.alerts: list[Alert] = []
        self._memory_state = "ok"
        self._oom_seen = -1
        self._drops_seen = 0

    @property
    def budgeted(self) -> bool:
        smp = self.sampling
        return smp.memory_budget is not None or smp.cpu_budget is not None

    def read(self, elapsed: float) -> None:
        """Read the figures now (outside auto mode; auto mode's governor reads them itself)."""
        if self.watcher is None:
            from kstap.control.pressure import PressureReader

            smp = self.sampling
            self.watcher = PressureReader(memory_budget=smp.memory_budget, cpu_budget=smp.cpu_budget)
        self.saw(self.watcher.read(), elapsed)

    def saw(self, resources: ResourceStats, elapsed: float) -> None:
        """Record figures read at ``elapsed`` seconds (by :meth:`read` or the governor)."""
        self.resources = resources
        if resources.memory_limit:
            self.memory_history.append((elapsed, resources.memory_bytes / resources.memory_limit))

    def check(self, dropped: int) -> None:
        """Threshold crossings (memory 70 % warn / 90 % critical, OOM kills, new kernel drops)."""
        res = self.resources
        if res is not None and res.memory_limit:
            level = res.memory_bytes / res.memory_limit
            state = "critical" if level >= MEMORY_CRITICAL else "warn" if level >= MEMORY_WARN else "ok"
            if state != self._memory_state and state != "ok":
                self.alert(AlertLevel(state), "memory", f"memory {level:.0%} of {res.memory_limit >> 20} MiB")
            self._memory_state = state
            if res.oom_events > self._oom_seen:
                if self._oom_seen >= 0:
                    self.alert(AlertLevel.CRITICAL, "oom",
                               f"{res.oom_events - self._oom_seen} OOM kill(s) in the cgroup")
                self._oom_seen = res.oom_events
            elif self._oom_seen < 0:
                self._oom_seen = res.oom_events
        if dropped > self._drops_seen:
            self.alert(AlertLevel.WARN, "drops", f"kernel dropped {dropped - self._drops_seen} packets (ring full)")
            self._drops_seen = dropped

    def alert(self, level: AlertLevel, kind: str, message: str) -> None:
        alert = Alert(self.clock() - self.started, level, kind, message)
        self.alerts.append(alert)
        self.reporter.event(AlertRaised.of(alert))
