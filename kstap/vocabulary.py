"""The closed vocabularies every stage shares: sampling modes, alert levels, controller causes.

StrEnums, so a typo is a type error and a decision never hangs on matching free text, while the
values stay the plain strings that settings, NDJSON, the worker protocol and pcapng comments
carry. This module imports nothing of kstap: it is the bottom layer (see docs/architecture.md).
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """How flows are sampled (``--mode``)."""

    FULL = "full"
    """Every flow (the filter has no sampling tail)."""
    PERCENTAGE = "percentage"
    """A fixed rate; changed only by a control request."""
    AUTO = "auto"
    """The controller moves the rate with the pressure."""


class AlertLevel(StrEnum):
    """How loud an alert is in the alerts panel, NDJSON and the worker log."""

    INFO = "info"
    WARN = "warn"
    CRITICAL = "critical"

    @classmethod
    def parse(cls, value: object, default: AlertLevel | None = None) -> AlertLevel:
        """The level named by ``value`` (wire text); anything else is ``default`` (WARN)."""
        try:
            return cls(str(value))
        except ValueError:
            return default if default is not None else cls.WARN


class Cause(StrEnum):
    """Why the sampling rate is what it is at one tick: the controller's decision, as a value.

    :attr:`EMERGENCY` is the one that sheds live flows (highest hashes first); every other cause
    only decides new flows. The controller's human text (``ControllerState.reason``) says more.
    """

    PI = "pi"
    """The PI loop's own output."""
    DEADBAND = "deadband"
    """Within the dead-band around the setpoint: the rate is held."""
    CLAMP = "clamp"
    """The PI output was clamped to [min_rate, max_rate]."""
    SLEW = "slew"
    """The change was limited by the raise/cut slew rate."""
    NO_LIMIT = "no-limit"
    """No resource has a limit: the rate goes to max_rate."""
    HOLD = "hold"
    """Cooling down after an emergency: the rate is held."""
    HOLD_DROPS = "hold: kernel drops"
    """New kernel drops: a raise is held back."""
    EMERGENCY = "emergency"
    """Halved (memory >= 90 %, an OOM, a PSI spike, CPU or a kernel-drop streak): live flows are shed."""
    CONTROL = "control"
    """Set from outside (a worker's ``POST /v1/control``)."""
