"""The typed events and their wire form: what a worker sends is what a reporter gets."""

from __future__ import annotations

from kstap.contracts import AlertLevel, AlertRaised, Cause, RateChanged, parse_event
from kstap.model import ControllerState, cause_of


def test_events_survive_their_wire_form() -> None:
    for event in (RateChanged(1.0, 0.5, Cause.EMERGENCY, "emergency: memory 93% >= 90%", 0.93),
                  RateChanged(0.5, 0.6, Cause.CONTROL, "control", None, worker=2, node="node-b"),
                  AlertRaised(AlertLevel.CRITICAL, "oom", "1 OOM kill(s) in the cgroup")):
        assert parse_event(event.KIND, event.wire()) == event


def test_what_makes_no_sense_on_the_wire_is_no_event_or_a_warning() -> None:
    assert parse_event("stats", {"rate": 1.0}) is None
    assert parse_event("rate_change", {"old": "1", "new": 0.5}) is None
    assert parse_event("rate_change", {"old": True, "new": 0.5}) is None
    assert parse_event("alert", {"level": "bogus"}) == AlertRaised(AlertLevel.WARN, "alert", "")


def test_the_cause_is_a_value_and_the_reason_is_text() -> None:
    assert cause_of("emergency: OOM events +1") is Cause.EMERGENCY
    assert cause_of("hold: kernel drops") is Cause.HOLD_DROPS and cause_of("hold") is Cause.HOLD
    assert cause_of("") is Cause.PI and cause_of("something else") is Cause.PI
    assert ControllerState(reason="emergency: scripted").cause is Cause.EMERGENCY  # a scripted governor
    assert ControllerState(reason="emergency: x", cause=Cause.PI).cause is Cause.PI  # a set cause wins
