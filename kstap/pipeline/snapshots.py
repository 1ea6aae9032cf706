"""Snapshots: what a view needs at one instant, built from the running stages' figures."""

from __future__ import annotations

from collections import Counter
from typing import cast

from kstap.config import TapSettings
from kstap.contracts import Source, WorkerStatsSource
from kstap.model import CaptureSummary, StatsSnapshot, WorkerStats
from kstap.pipeline.resources import ResourceWatch
from kstap.pipeline.steering import Steering

LINKTYPE_NAMES = {1: "EN10MB (Ethernet)", 101: "RAW (Raw IP)", 113: "LINUX_SLL (Linux cooked v1)",
                  276: "LINUX_SLL2 (Linux cooked v2)", 0: "NULL (BSD loopback)"}

HISTORY = 600
"""Points of rate and memory history a snapshot carries (10 minutes at one a second)."""
ALERTS = 20
"""Latest alerts a snapshot carries."""


def snapshot(elapsed: float, settings: TapSettings, summary: CaptureSummary, source: Source, steering: Steering,
             watch: ResourceWatch, dissect_memory: int, endpoints: Counter[str],
             packets_per_second: float | None = None) -> StatsSnapshot:
    """``packets_per_second``: the recent rate (the loop's last seconds); None = the average since the start."""
    s, sampler = summary, steering.sampler
    return StatsSnapshot(
        elapsed=elapsed,
        mode=settings.sampling.mode,
        profile=settings.profile,
        filter=settings.bpf_filter,
        targets=list(settings.interfaces) or ([settings.read] if settings.read else []),
        output=settings.output.path,
        captured=s.captured,
        bytes_captured=s.bytes_captured,
        received=s.received,
        dropped=s.dropped,
        duplicates=s.duplicates,
        sampled_out=s.sampled_out,
        left_out=s.left_out,
        rate=steering.rate,
        packets_per_second=(packets_per_second if packets_per_second is not None
                            else s.captured / elapsed if elapsed > 0 else 0.0),
        flows_tracked=sampler.stats.flows_tracked if sampler else 0,
        dissect_memory=dissect_memory,
        top_endpoints=endpoints.most_common(5),
        workers=workers(source, summary, steering.rate),
        controller=steering.controller,
        resources=watch.resources,
        alerts=list(watch.alerts[-ALERTS:]),
        rate_history=list(steering.rate_history[-HISTORY:]),
        memory_history=list(watch.memory_history[-HISTORY:]),
    )


def workers(source: Source, summary: CaptureSummary, rate: float) -> list[WorkerStats]:
    """The source's own per-worker figures when it has them, else what this loop counted per worker."""
    if source.capabilities.worker_stats:
        return cast(WorkerStatsSource, source).worker_stats()
    per = sorted(summary.per_worker.items())
    if len(per) == 1:  # one local worker: the kernel's counters are its own (not "received 0" beside them)
        (w, n), = per
        return [WorkerStats(worker=w, captured=n, received=summary.received, dropped=summary.dropped, rate=rate)]
    return [WorkerStats(worker=w, captured=n, rate=rate) for w, n in per]
