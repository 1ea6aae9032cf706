"""Auto mode's governor: the pressure reader and the rate controller, ticked together."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from kstap.config import SamplingSettings
from kstap.control.controller import ControllerSettings, RateController
from kstap.control.pressure import PressureReader
from kstap.model import ControllerState, ResourceStats


@dataclass
class Governor:
    """Reads pressure, runs one controller tick; the pipeline calls :meth:`update` about 1 Hz."""

    reader: PressureReader
    controller: RateController

    def update(self, kernel_drops: int = 0, kernel_received: int = 0) -> tuple[ResourceStats, ControllerState]:
        stats = self.reader.read()
        stats.kernel_drops = kernel_drops
        stats.kernel_received = kernel_received
        return stats, self.controller.update(stats)


def build_governor(sampling: SamplingSettings, *, root: str = "/", pid: int | str = "self",
                   clock: Callable[[], float] = time.monotonic,
                   settings: ControllerSettings | None = None) -> Governor:
    """The governor for one run: its budgets, its starting and minimum rate."""
    cs = settings or ControllerSettings()
    reader = PressureReader(root=root, pid=pid, memory_budget=sampling.memory_budget,
                            cpu_budget=sampling.cpu_budget, clock=clock)
    if sampling.auto_start:
        sampling.rate, cs.estimate_start = start_rate(reader.read(), sampling.rate)
    cs.initial_rate = sampling.rate
    cs.min_rate = min(sampling.min_rate, sampling.rate)
    return Governor(reader, RateController(cs, clock=clock))


def start_rate(limits: ResourceStats, cautious: float) -> tuple[float, bool]:
    """Auto mode's first rate, and whether the first measured tick should re-estimate it.

    No limit known: full (nothing to protect; the controller only cuts if the loop starves or the
    ring drops). A memory limit: ``cautious`` (a full start is what OOM-kills a worker, and a flow's
    memory is only known once it lives). A CPU quota only: ``cautious`` until the first tick has
    measured the CPU per packet, then the rate that cost puts at the setpoint
    (:attr:`ControllerSettings.estimate_start`).
    """
    if limits.memory_limit is None and limits.cpu_limit is None:
        return 1.0, False
    return cautious, limits.memory_limit is None

