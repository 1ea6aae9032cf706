"""Pressure stall information (PSI): ``/proc/pressure/{memory,cpu,io}`` and cgroup v2 ``*.pressure``.

Each file holds up to two lines::

    some avg10=0.12 avg60=0.05 avg300=0.01 total=123456
    full avg10=0.00 avg60=0.00 avg300=0.00 total=0

``avg*`` are the percentage of wall time (0..100) in which *some* (at least one) or *all* (full)
non-idle tasks were stalled on the resource, averaged over 10/60/300 s; ``total`` is the stalled
time in microseconds since boot (or since the cgroup was created). The controller turns the growth
of ``full total`` between two ticks into a stall fraction, which reacts within one tick where
``avg10`` lags by seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from kstap.pseudofiles import PLAIN, PseudoFiles


@dataclass(frozen=True)
class PsiLine:
    """One ``some`` or ``full`` line."""

    avg10: float
    """Percent (0..100) of the last 10 s in which tasks were stalled."""
    avg60: float
    avg300: float
    total: int
    """Microseconds stalled since boot or cgroup creation (a counter)."""


@dataclass(frozen=True)
class Psi:
    """One PSI file; a line the kernel does not write (``full`` for cpu before 5.13) is None."""

    some: PsiLine | None = None
    full: PsiLine | None = None


def parse_psi(text: str) -> Psi | None:
    """Parse a PSI file's text; None when no line is well formed."""
    lines: dict[str, PsiLine] = {}
    for raw in text.splitlines():
        kind, _, rest = raw.strip().partition(" ")
        if kind not in ("some", "full"):
            continue
        fields: dict[str, str] = {}
        for item in rest.split():
            name, sep, value = item.partition("=")
            if sep:
                fields[name] = value
        try:
            lines[kind] = PsiLine(float(fields["avg10"]), float(fields["avg60"]), float(fields["avg300"]),
                                  int(fields["total"]))
        except (KeyError, ValueError):
            continue
    if not lines:
        return None
    return Psi(some=lines.get("some"), full=lines.get("full"))


def read_psi(path: str, files: PseudoFiles = PLAIN) -> Psi | None:
    """Read and parse one PSI file; None if it is missing, unreadable (PSI off: EOPNOTSUPP) or empty."""
    text = files.text(path)
    return parse_psi(text) if text is not None else None
