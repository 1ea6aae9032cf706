"""How long to wait before trying again: one exponential backoff for every reconnect loop
(the pod watch, the worker streams)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: initial, initial*factor, … capped at maximum."""

    initial: float = 0.5
    """Seconds before the first retry: a dropped watch (an API server rollout, a load balancer's idle
    cut) usually comes straight back."""
    factor: float = 2.0
    maximum: float = 30.0
    """Ceiling of the delay, seconds; client-go's reflector backs off to 30 s as well."""
    attempts: int = 10
    """Consecutive failed attempts before a caller that gives up does (the pod watch: exit 3 after
    about 3 minutes at the defaults); 0: never give up."""

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return float(min(self.maximum, self.initial * self.factor ** max(0, attempt - 1)))
