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
    cs.initial_rate = sampling.rate
    cs.min_rate = min(sampling.min_rate, sampling.rate)
    reader = PressureReader(root=root, pid=pid, memory_budget=sampling.memory_budget,
                            cpu_budget=sampling.cpu_budget, clock=clock)
    return Governor(reader, RateController(cs, clock=clock))
