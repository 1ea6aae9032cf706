"""The wiring: the one package that puts the stages together (stages never import each other).

- :mod:`~kstap.pipeline.assembly`: builds the stages for tap, worker and remote (cluster);
- :mod:`~kstap.pipeline.loop`: the capture loop (read → sample → sink and consumers → tick);
- :mod:`~kstap.pipeline.steering`: rate, kernel filter and live control requests;
- :mod:`~kstap.pipeline.resources`: resource figures and alerts;
- :mod:`~kstap.pipeline.snapshots`: what the views get once a second;
- :mod:`~kstap.pipeline.cluster`: the cluster session (workers deployed, pod churn followed);
- :mod:`~kstap.pipeline.stopping`: the stop flag and signals;
- :mod:`~kstap.pipeline.offline`: ``kstap dissect FILE``, the dissector alone over a capture file.

It reports through a :class:`~kstap.contracts.Reporter` the CLI supplies, so no stage writes to
the terminal. The contracts it relies on are in :mod:`kstap.contracts`.

The names below are imported when first used (PEP 562), so importing one submodule (``kstap
dissect`` needs only :mod:`~kstap.pipeline.offline`) does not load the whole capture side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kstap.contracts import Reporter
    from kstap.pipeline.assembly import run_tap
    from kstap.pipeline.snapshots import LINKTYPE_NAMES
    from kstap.pipeline.stopping import StopFlag

__all__ = ["LINKTYPE_NAMES", "Reporter", "StopFlag", "run_tap"]

_HOMES = {"LINKTYPE_NAMES": "kstap.pipeline.snapshots", "Reporter": "kstap.contracts",
          "StopFlag": "kstap.pipeline.stopping", "run_tap": "kstap.pipeline.assembly"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
