"""The sampling metadata kstap writes into captures, as text Wireshark shows and kstap parses back.

Packet comments (``frame.comment`` in Wireshark) are ``kstap:`` followed by an event word and
``key=value`` pairs, so a person can read them and ``kstap stats`` can parse them:

    kstap: flow id=1a2b3c4d mode=percentage rate=0.25 seed=5f78c33274e4      first packet of a kept flow
    kstap: rate id=1a2b3c4d rate=0.125 previous=0.25 reason=pi               first packet after a rate change
    kstap: shed id=1a2b3c4d rate=0.125 reason=emergency                      last packet kept of a shed flow

The rate on a ``flow`` comment is the flow's inclusion probability: ``kstap stats`` weighs the
flow's packets and bytes by its inverse (Horvitz-Thompson). The section header carries the run's
settings as ``kstap: run mode=… rate=… seed=… filter=…``. The seed itself is never written,
only its id (see :func:`kstap.sampling.flowhash.seed_id`).
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "kstap:"


@dataclass(frozen=True)
class Note:
    """One parsed kstap comment."""

    event: str
    """'flow', 'rate', 'shed' or 'run'."""
    fields: dict[str, str]

    def rate(self) -> float | None:
        raw = self.fields.get("rate")
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None


def _fmt(rate: float) -> str:
    return f"{rate:.6g}"


def flow_note(flow_id: str, mode: str, rate: float, seed_id: str) -> str:
    return f"{PREFIX} flow id={flow_id} mode={mode} rate={_fmt(rate)} seed={seed_id}"


def flow_note_suffix(mode: str, rate: float, seed_id: str) -> bytes:
    """What follows ``id=HASH `` in :func:`flow_note`: the C fast path writes the hash itself."""
    return flow_note("X", mode, rate, seed_id).split("id=X ", 1)[1].encode()


def rate_note(flow_id: str, rate: float, previous: float, reason: str) -> str:
    return f"{PREFIX} rate id={flow_id} rate={_fmt(rate)} previous={_fmt(previous)} reason={reason}"


def shed_note(flow_id: str, rate: float, reason: str) -> str:
    return f"{PREFIX} shed id={flow_id} rate={_fmt(rate)} reason={reason}"


def run_note(mode: str, rate: float, seed_id: str, expression: str) -> str:
    return f"{PREFIX} run mode={mode} rate={_fmt(rate)} seed={seed_id} filter={expression or '(none)'}"


def parse(comment: str) -> Note | None:
    """A kstap comment back into its parts; None for anything else (other tools' comments)."""
    if not comment.startswith(PREFIX):
        return None
    words = comment[len(PREFIX) :].split()
    if not words:
        return None
    fields: dict[str, str] = {}
    key = None
    for w in words[1:]:
        w = w.removesuffix(";")  # "…; backend=…" follows the run note in the SHB comment
        if not w:
            continue
        if "=" in w:
            key, _, value = w.partition("=")
            fields[key] = value
        elif key is not None:  # a value with spaces (the run's filter) continues
            fields[key] += " " + w
    return Note(words[0], fields)
