"""Horvitz-Thompson totals under Poisson sampling of flows.

kstap keeps or drops whole flows, each flow ``f`` independently with a known probability
``p_f`` (its hash against the threshold of the rate in force at its first packet). For any
per-flow value ``x_f`` (packets, bytes, or 1 to count flows) over the sampled flows ``s``:

    T̂ = Σ_{f∈s} x_f / p_f                        unbiased for the true total Σ_all x_f
    V̂ = Σ_{f∈s} (1 - p_f) · x_f² / p_f²           unbiased for Var(T̂) under Poisson sampling
    95% interval: T̂ ± 1.96·√V̂, the lower end raised to the observed total Σ_{f∈s} x_f
                  (the true total cannot be smaller than what the capture holds)

Pure arithmetic on plain numbers: no I/O, no terminal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

Z95 = 1.959963984540054
"""The standard normal's 97.5% quantile: T̂ ± Z95·√V̂ is the two-sided 95% interval."""


@dataclass(frozen=True)
class Estimate:
    """One estimated total."""

    observed: float
    """Σ x over the sampled flows: what the capture holds."""
    total: float
    """The Horvitz-Thompson estimate of the true total, Σ x/p."""
    variance: float
    """The estimated variance of ``total``, Σ (1 - p)·x²/p²."""
    low: float
    """Lower end of the 95% interval (never below ``observed``)."""
    high: float
    """Upper end of the 95% interval."""

    @property
    def std_error(self) -> float:
        return math.sqrt(self.variance)

    def covers(self, true_total: float) -> bool:
        """Whether ``true_total`` lies inside the interval (ends included)."""
        return self.low <= true_total <= self.high

    def as_dict(self) -> dict[str, float | list[float]]:
        return {
            "observed": self.observed,
            "estimate": self.total,
            "variance": self.variance,
            "std_error": self.std_error,
            "ci95": [self.low, self.high],
        }


class HTSum:
    """Accumulates one Horvitz-Thompson total flow by flow."""

    __slots__ = ("observed", "total", "variance")

    def __init__(self) -> None:
        self.observed = 0.0
        self.total = 0.0
        self.variance = 0.0

    def add(self, x: float, p: float) -> None:
        """Add a sampled flow with value ``x`` and inclusion probability ``p`` (0 < p ≤ 1)."""
        if not 0.0 < p <= 1.0:
            raise ValueError(f"inclusion probability must be in (0, 1], got {p!r}")
        w = x / p
        self.observed += x
        self.total += w
        self.variance += (1.0 - p) * w * w

    def result(self, z: float = Z95) -> Estimate:
        half = z * math.sqrt(self.variance)
        return Estimate(self.observed, self.total, self.variance,
                        max(self.observed, self.total - half), self.total + half)


def horvitz_thompson(samples: Iterable[tuple[float, float]], z: float = Z95) -> Estimate:
    """The estimate from ``(x, p)`` pairs, one per sampled flow."""
    acc = HTSum()
    for x, p in samples:
        acc.add(x, p)
    return acc.result(z)


@dataclass(frozen=True)
class FlowSample:
    """What the capture holds of one sampled flow."""

    packets: int
    bytes: int
    """Original lengths (as on the wire), not the captured lengths."""
    p: float
    """The flow's inclusion probability."""
    is_flow: bool = True
    """False for frames that belong to no flow (non-IP, always kept with p = 1): they count in
    packets and bytes but not as a flow."""


@dataclass(frozen=True)
class TrafficEstimate:
    """Estimated totals of packets, bytes and flows."""

    packets: Estimate
    bytes: Estimate
    flows: Estimate


def estimate_traffic(samples: Iterable[FlowSample], z: float = Z95) -> TrafficEstimate:
    """Horvitz-Thompson totals of packets, bytes and flows from per-flow samples."""
    packets, size, flows = HTSum(), HTSum(), HTSum()
    for s in samples:
        packets.add(s.packets, s.p)
        size.add(s.bytes, s.p)
        if s.is_flow:
            flows.add(1.0, s.p)
    return TrafficEstimate(packets.result(z), size.result(z), flows.result(z))
