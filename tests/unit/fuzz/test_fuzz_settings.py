"""The config file / --set / KSTAP_* parser under fuzzing: whatever comes in, the outcome is settings
that validate or a UsageError (exit 2) with a one-line message; nothing else escapes."""

from __future__ import annotations

import math

import seeds
import targets
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import mutated

from kstap import config
from kstap.settings_sources import flatten, to_mapping

FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = sorted(flatten(to_mapping(config.TapSettings())))
NASTY = ["", " ", "inf", "-inf", "nan", "NaN", "1e400", "-1e400", "0x", "0x1_0", "-1", "0", "1e-400",
         "99999999999999999999999999", "25%", "%", "inf%", "nan%", "infMi", "nanGi", "-5Mi", "1e30Gi", "1Gi",
         "true", "false", "null", "~", "a,b", ",", "[1, 2]", "{a: 1}", "0o777", "0b101", "1_000", "٣", "\u2028",
         "veth0", "-", "auto", "full", "percentage", "best", "\x00", "\udcff"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**80), max_value=2**80),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(NASTY), st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(["mode", "path", "x", ""]),
                                                                       inner, max_size=3)), max_leaves=6)
KEY = st.one_of(st.sampled_from(KEYS), st.sampled_from(["sampling", "output", "profile", "a..b", ".x", "x.",
                                                        "sampling.mode.x", "output.path.y"]), st.text(max_size=10))


@FAST
@given(st.lists(st.tuples(KEY, st.sampled_from(NASTY) | st.text(max_size=10)).map("=".join) | st.text(max_size=15),
                max_size=6))
def test_set_items(items: list[str]) -> None:
    targets.run_settings(None, items, {})


@FAST
@given(st.dictionaries(KEY, VALUES, max_size=6))
def test_config_files_as_yaml(doc: dict[str, object]) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True) if _dumpable(doc) else "{}"
    targets.run_settings(text, [], {})


@FAST
@given(st.text(max_size=200))
def test_config_files_as_any_text(text: str) -> None:
    targets.run_settings(text, [], {})


@FAST
@given(st.dictionaries(st.sampled_from([k.replace(".", "_").upper() for k in KEYS] + ["PROFILE", "X", "OUTPUT__PATH"]),
                       st.sampled_from(NASTY) | st.text(max_size=10), max_size=5))
def test_environment(env: dict[str, str]) -> None:
    targets.run_settings(None, [], {f"KSTAP_{k}": v.replace("\x00", "") for k, v in env.items()})


@FAST
@given(mutated(seeds.settings_seeds(), max_edits=6))
def test_damaged_seeds(data: bytes) -> None:
    targets.settings(data)


def test_every_setting_with_every_nasty_value() -> None:
    """The whole grid, deterministically: each setting given each awkward value by --set and by env."""
    for key in KEYS:
        for value in NASTY:
            targets.run_settings(None, [f"{key}={value}", "interfaces=veth0"], {})
            if "\x00" not in value and "\udcff" not in value:
                targets.run_settings(None, [], {"KSTAP_" + key.replace(".", "__").upper(): value,
                                                "KSTAP_INTERFACES": "veth0"})


def test_a_valid_combination_resolves() -> None:
    got = targets.run_settings("interfaces: [veth0]\nsampling: {mode: auto}\n", ["sampling.min_rate=5%"],
                               {"KSTAP_OUTPUT_PATH": "x.pcapng"})
    assert isinstance(got, config.TapSettings)
    assert got.sampling.mode == "auto" and got.sampling.min_rate == 0.05 and got.output.path == "x.pcapng"


def _dumpable(doc: object) -> bool:
    try:
        yaml.safe_dump(doc)
    except (yaml.YAMLError, UnicodeEncodeError, ValueError):
        return False
    return not (isinstance(doc, float) and math.isnan(doc))
