"""``kstap tune``: find the highest sampling rate a memory budget sustains.

The user's recipe, made to converge: start from a baseline rate; after an OOM lower the rate by
10 %, otherwise raise it by 5 % - a run of steps in one direction compounds (the k-th step moves by
10 % or 5 % to the k-th power), so a far answer takes O(log) trials, not dozens; as soon as a
failing rate and a stable rate bracket the answer, bisect between them; finish with a stability
run at the candidate (lowering by 10 % again if it fails). Each trial is a real capture worker in a
memory cgroup of the budget; OOM comes from the cgroup's own counters. The search itself is pure
(a trial is a function), so it is tested on simulated workloads too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    """One trial of the search."""

    number: int
    rate: float
    oom: bool
    peak_bytes: int
    phase: str
    """'baseline', 'raise', 'lower', 'bisect' or 'stability'."""


@dataclass
class TuneResult:
    steps: list[Step] = field(default_factory=list)
    recommended: float | None = None
    """None when even the minimum rate runs out of memory."""
    converged: bool = False


Trial = Callable[[float], tuple[bool, int]]
"""rate → (OOM happened, peak memory bytes)."""


SAFETY = 0.9
"""The recommendation is the highest stable rate times this (one 'lower 10 %' step of the recipe)."""


def tune(trial: Trial, *, start: float = 1.0, min_rate: float = 0.01, tolerance: float = 0.02,
         max_steps: int = 20, on_step: Callable[[Step], None] | None = None) -> TuneResult:
    """Search the highest stable rate; ``tolerance`` is the bracket width (in rate) that ends it."""
    result = TuneResult()
    good: float | None = None
    bad: float | None = None
    rate = min(1.0, max(min_rate, start))
    phase = "baseline"
    streak = 0  # consecutive steps in the same direction: the k-th moves by 10 % (5 %) to the k-th power

    def run(r: float, ph: str) -> bool:
        oom, peak_bytes = trial(r)
        step = Step(len(result.steps) + 1, r, oom, peak_bytes, ph)
        result.steps.append(step)
        if on_step is not None:
            on_step(step)
        return oom

    while len(result.steps) < max_steps:
        if run(rate, phase):
            bad = rate if bad is None else min(bad, rate)
            if rate <= min_rate:
                return result  # nothing sustainable
        else:
            good = rate if good is None else max(good, rate)
            if rate >= 1.0:
                bad = None
                break
        if good is not None and bad is not None:
            if bad - good <= tolerance:
                break
            rate, phase = round((good + bad) / 2, 4), "bisect"
        elif bad is not None:
            streak = streak + 1 if phase == "lower" else 1
            rate, phase = max(min_rate, round(rate * 0.9**streak, 4)), "lower"
        else:
            streak = streak + 1 if phase == "raise" else 1
            rate, phase = min(1.0, round(rate * 1.05**streak, 4)), "raise"
    # stability: one recipe step (-10 %) below the highest stable rate, so run-to-run variation of
    # the workload does not put the recommendation on the edge; again -10 % while it fails
    candidate = None if good is None else (good if good >= 1.0 else max(min_rate, round(good * 0.9, 4)))
    while candidate is not None and len(result.steps) < max_steps + 5:
        if not run(candidate, "stability"):
            result.recommended = candidate
            result.converged = True
            return result
        candidate = round(candidate * 0.9, 4) if candidate * 0.9 >= min_rate else None
    return result
