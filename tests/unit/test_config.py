"""kstap.config: every conflicting or impossible combination is a usage error (exit 2)."""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest

from kstap.config import BACKENDS, OutputSettings, TapSettings
from kstap.errors import ExitCode, UsageError

LIVE: dict[str, Any] = {"interfaces": ["lo"]}
READ: dict[str, Any] = {"read": "in.pcap"}


def _settings(base: dict[str, Any], **kw: Any) -> TapSettings:
    out = kw.pop("output", {})
    return TapSettings(**{**base, **kw}, output=OutputSettings(**out))


# (settings, start of the message, a hint is expected)
CONFLICTS: list[tuple[TapSettings, str, bool]] = [
    (_settings(READ, interfaces=["lo"]), "--read and -i cannot be used together", True),
    (_settings({}), "nothing to capture", True),
    (_settings(LIVE, realtime=True), "--realtime only applies to --read", True),
    (_settings(READ, workers=2), "--workers only applies to live capture", True),
    (_settings(READ, netns="ns1"), "--netns only applies to live capture", True),
    (_settings(LIVE, capture="dpdk"), "unknown capture backend 'dpdk'", True),
    (_settings(LIVE, workers=0), "--workers must be between 1 and 64", True),
    (_settings(LIVE, workers=65), "--workers must be between 1 and 64", True),
    (_settings(LIVE, workers=2, capture="libpcap"), "--workers 2 needs the af_packet backend", True),
    (_settings(LIVE, workers=2, capture="pf_ring"), "--workers 2 needs the af_packet backend", True),
    (_settings(LIVE, count=0), "-c must be a positive number", True),
    (_settings(LIVE, count=-5), "-c must be a positive number", True),
    (_settings(LIVE, duration=0), "--duration must be positive", True),
    (_settings(LIVE, duration=-1.5), "--duration must be positive", True),
    (_settings(LIVE, duration=math.nan), "--duration must be positive", True),
    (_settings(LIVE, snaplen=0), "--snaplen must be between 1 and 262144", True),
    (_settings(LIVE, snaplen=262145), "--snaplen must be between 1 and 262144", True),
    (_settings(LIVE, buffer_mib=0), "--buffer-size must be between 1 and 4096 MiB", True),
    (_settings(LIVE, buffer_mib=4097), "--buffer-size must be between 1 and 4096 MiB", True),
    (_settings(LIVE, output={"rotate_mb": 10}), "-C/-G/-W need an output file", True),
    (_settings(LIVE, output={"rotate_seconds": 60}), "-C/-G/-W need an output file", True),
    (_settings(LIVE, output={"ring_files": 3, "rotate_mb": 1}), "-C/-G/-W need an output file", True),
    (_settings(LIVE, output={"path": "-", "rotate_mb": 10}), "-C/-G cannot rotate standard output", True),
    (_settings(LIVE, output={"path": "-", "rotate_seconds": 5}), "-C/-G cannot rotate standard output", True),
    (_settings(LIVE, output={"path": "x.pcapng", "ring_files": 3}), "-W needs -C or -G", True),
    (_settings(LIVE, output={"path": "x.pcapng", "ring_files": 0, "rotate_mb": 1}), "-W must be at least 1",
     True),
    (_settings(LIVE, output={"path": "x.pcapng", "rotate_mb": 0}), "-C must be positive", True),
    (_settings(LIVE, output={"path": "x.pcapng", "rotate_mb": -1}), "-C must be positive", True),
    (_settings(LIVE, output={"path": "x.pcapng", "rotate_mb": math.nan}), "-C must be positive", True),
    (_settings(LIVE, output={"path": "x.pcapng", "rotate_mb": math.inf}), "-C must be positive", True),
    (_settings(LIVE, output={"path": "x.pcapng", "rotate_seconds": 0}), "-G must be positive", True),
    (_settings(LIVE, output={"path": "x.pcapng", "rotate_seconds": -3}), "-G must be positive", True),
    (_settings(LIVE, output={"path": "x.pcapng", "rotate_seconds": math.nan}), "-G must be positive", True),
    (_settings(LIVE, entries="-", output={"path": "-"}), "--entries - and -w - both want standard output", True),
    (_settings(LIVE, dissect_memory_mib=0), "--dissect-memory must be between 1 and 1048576 MiB", True),
    (_settings(LIVE, dedup_window_ms=-1), "--dedup-window must be between 0 and 10000 ms", True),
    (_settings(LIVE, dedup_window_ms=float("nan")), "--dedup-window must be between 0 and 10000 ms", True),
]

SAMPLING_CONFLICTS: list[tuple[dict[str, Any], str, bool]] = [
    ({"mode": "sometimes"}, "unknown --mode 'sometimes'", True),
    ({"rate": 0.0}, "--rate must be in (0, 1]", True),
    ({"rate": 1.5}, "--rate must be in (0, 1]", True),
    ({"mode": "percentage", "rate": 1.0}, "--mode percentage needs --rate below 1", True),
    ({"min_rate": 0.0}, "--min-rate must be in (0, 1]", True),
    ({"seed": 2**32}, "--seed must be a 32-bit number", True),
    ({"memory_budget": 0}, "--memory-budget must be positive", True),
    ({"cpu_budget": math.nan}, "--cpu-budget must be positive", True),
    ({"idle_timeout": math.nan}, "sampling.idle_timeout must be a positive number of seconds", True),
    ({"idle_timeout": -1.0}, "sampling.idle_timeout must be a positive number of seconds", True),
    ({"flow_table": "gpu"}, "sampling.flow_table must be auto, kernel or user", True),
]


@pytest.mark.parametrize(("fields", "message", "has_hint"), SAMPLING_CONFLICTS,
                         ids=[c[1][:40] for c in SAMPLING_CONFLICTS])
def test_sampling_conflict_is_a_usage_error(fields: dict[str, Any], message: str, has_hint: bool) -> None:
    settings = _settings(LIVE)
    for key, value in fields.items():
        setattr(settings.sampling, key, value)
    with pytest.raises(UsageError) as info:
        settings.validate()
    assert info.value.message.startswith(message), info.value.message
    assert bool(info.value.hint) == has_hint


def test_every_sampling_check_is_covered() -> None:
    source = inspect.getsource(TapSettings._validate_sampling)
    checks = source.count("raise UsageError(") + source.count("check_memory_budget(")
    assert checks == len({c[1] for c in SAMPLING_CONFLICTS})


@pytest.mark.parametrize(("settings", "message", "has_hint"), CONFLICTS, ids=[c[1][:40] for c in CONFLICTS])
def test_conflict_is_a_usage_error(settings: TapSettings, message: str, has_hint: bool) -> None:
    with pytest.raises(UsageError) as info:
        settings.validate()
    err = info.value
    assert err.code == ExitCode.USAGE == 2
    assert err.message.startswith(message), err.message
    assert bool(err.hint) == has_hint
    assert "\n" not in err.message


def test_every_check_in_validate_is_covered() -> None:
    """One distinct message per ``raise UsageError`` in validate(): a new check needs a case here."""
    source = inspect.getsource(TapSettings.validate)
    assert source.count("raise UsageError(") == len({c[1] for c in CONFLICTS})


@pytest.mark.parametrize(
    "settings",
    [
        _settings(LIVE),
        _settings(READ),
        _settings(READ, realtime=True, count=1, duration=0.5, snaplen=1),
        _settings({"interfaces": ["lo", "veth1"]}, workers=64, buffer_mib=4096, snaplen=262144),
        _settings(LIVE, workers=8, capture="best", netns="ns1"),
        _settings(LIVE, capture="libpcap"),
        _settings(LIVE, output={"path": "-"}),
        _settings(LIVE, output={"path": "x.pcapng", "rotate_mb": 0.5, "ring_files": 1}),
        _settings(LIVE, output={"path": "x.pcapng", "rotate_seconds": 1, "ring_files": 10}),
        _settings(LIVE, output={"path": "x.pcapng", "rotate_mb": 10, "rotate_seconds": 60}),
    ],
)
def test_valid_settings_pass(settings: TapSettings) -> None:
    settings.validate()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_is_accepted(backend: str) -> None:
    _settings(LIVE, capture=backend).validate()


def test_defaults_are_documented_values() -> None:
    s = TapSettings()
    assert (s.snaplen, s.buffer_mib, s.workers, s.capture) == (262144, 32, 1, "af_packet")
    assert s.output == OutputSettings()
