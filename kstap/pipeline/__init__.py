"""The wiring: the one package that puts the stages together (stages never import each other).

- :mod:`~kstap.pipeline.assembly`: builds the stages for tap, worker, remote (cluster) and dissect;
- :mod:`~kstap.pipeline.loop`: the capture loop (read → sample → sink and consumers → tick);
- :mod:`~kstap.pipeline.steering`: rate, kernel filter and live control requests;
- :mod:`~kstap.pipeline.resources`: resource figures and alerts;
- :mod:`~kstap.pipeline.snapshots`: what the views get once a second;
- :mod:`~kstap.pipeline.cluster`: the cluster session (workers deployed, pod churn followed);
- :mod:`~kstap.pipeline.stopping`: the stop flag and signals.

It reports through a :class:`~kstap.contracts.Reporter` the CLI supplies, so no stage writes to
the terminal. The contracts it relies on are in :mod:`kstap.contracts`.
"""

from __future__ import annotations

from kstap.contracts import Reporter
from kstap.pipeline.assembly import run_tap
from kstap.pipeline.snapshots import LINKTYPE_NAMES
from kstap.pipeline.stopping import StopFlag

__all__ = ["LINKTYPE_NAMES", "Reporter", "StopFlag", "run_tap"]
