"""Pressure readers (cgroup v2/v1, PSI, psutil) and the auto-mode rate controller.

- :mod:`kstap.control.cgroups`: find the process's cgroups and read limits, usage, OOM and throttling.
- :mod:`kstap.control.psi`: pressure stall information files.
- :mod:`kstap.control.pressure`: :class:`PressureReader` → :class:`~kstap.model.ResourceStats`, and
  :func:`pressure`, the one number the controller regulates.
- :mod:`kstap.control.controller`: :class:`RateController` (PI(D) on ln(rate)) and its settings.
- :mod:`kstap.control.plant`: a simulated plant and step-response figures, for tests and dry runs.
"""

from __future__ import annotations

from kstap.control.controller import ControllerSettings, RateController
from kstap.control.pressure import PressureReader, pressure

__all__ = ["ControllerSettings", "PressureReader", "RateController", "pressure"]
