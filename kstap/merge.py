"""The time-ordered merge: items from several inputs are held until no input can still deliver an
older one (every input has promised its items up to a watermark), then released in time order.

One job, used three times: the rings of a multi-interface capture, the fanout workers, and the
remote workers' streams. Items that share a timestamp keep their arrival order (the sort is stable),
so a merge never reorders what one input delivered.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class TimeOrderedMerge(Generic[T]):
    """Held items, released up to a watermark in the order of ``key`` (nanoseconds)."""

    def __init__(self, key: Callable[[T], int]) -> None:
        self.key = key
        self._held: list[T] = []

    def add(self, items: Iterable[T]) -> None:
        self._held.extend(items)

    def release(self, upto: int) -> list[T]:
        """Every held item whose time is at or before ``upto``, oldest first."""
        held = self._held
        if not held:
            return []
        key = self.key
        held.sort(key=key)
        cut = bisect.bisect_right(held, upto, key=key)
        out, self._held = held[:cut], held[cut:]
        return out

    def release_all(self) -> list[T]:
        """Everything still held, oldest first (the inputs have ended)."""
        out, self._held = sorted(self._held, key=self.key), []
        return out

    def __len__(self) -> int:
        return len(self._held)
