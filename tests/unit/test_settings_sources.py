"""Settings from defaults < profile < config file < KSTAP_* env < flags, type-checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kstap import settings_sources as ss
from kstap.config import PROFILES, TapSettings
from kstap.errors import ExitCode, UsageError


@dataclass
class Inner:
    path: str | None = None
    size: float | None = None


@dataclass
class Toy:
    name: str = "x"
    count: int = 1
    ratio: float = 0.5
    on: bool = False
    tags: list[str] = field(default_factory=list)
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)
    profile: str | None = None


def defaults() -> dict[str, Any]:
    return ss.to_mapping(Toy())


# -- merge and precedence ------------------------------------------------------------------------------
def test_precedence_defaults_profile_file_env_flags() -> None:
    env = {"KSTAP_COUNT": "4", "KSTAP_INNER_PATH": "env.pcapng", "HOME": "/nowhere"}
    merged = ss.merge(defaults(), {"count": 2, "ratio": 0.1, "name": "profile"},
                      {"count": 3, "ratio": 0.2, "inner": {"path": "file.pcapng", "size": 5}},
                      env, {"count": 5})
    assert merged["name"] == "profile"          # profile over defaults
    assert merged["ratio"] == 0.2               # file over profile
    assert merged["inner"] == {"path": "env.pcapng", "size": 5}  # env over file, siblings kept
    assert merged["count"] == 5                 # flags over everything
    assert merged["on"] is False and merged["tags"] == []


def test_origins_say_where_each_value_came_from() -> None:
    merged, origins = ss.merge_with_origins(defaults(), {"name": "p"}, {"ratio": 0.2}, {"KSTAP_ON": "true"},
                                            {"inner.path": "f"}, profile_name="dev", file_name="/c.yaml")
    assert origins["name"] == "profile dev" and origins["ratio"] == "file /c.yaml"
    assert origins["on"] == "env KSTAP_ON" and origins["inner.path"] == "flag" and origins["count"] == "default"
    assert merged["inner"]["path"] == "f"


def test_env_names_and_foreign_variables() -> None:
    names = ss.env_names(defaults())
    assert names["KSTAP_INNER_PATH"] == names["KSTAP_INNER__PATH"] == "inner.path"
    layer, where = ss.env_layer({"KSTAP_DEBUG": "1", "KSTAP_PURE_PYTHON": "1", "KSTAP_INNER__SIZE": "3",
                                 "PATH": "/bin"}, defaults())
    assert layer == {"inner": {"size": "3"}} and where == {"inner.size": "KSTAP_INNER__SIZE"}


def test_nest_flatten_deep_merge() -> None:
    assert ss.nest({"a.b": 1, "a": {"c": 2}, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
    assert ss.flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}
    assert ss.deep_merge({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": 9}, "l": [2]}) == {"a": {"b": 9, "c": 2},
                                                                                          "l": [2]}
    with pytest.raises(UsageError):
        ss.nest({"a..b": 1})


# -- --set -----------------------------------------------------------------------------------------------
def test_parse_set() -> None:
    assert ss.parse_set(["count=3", "inner.path=a=b.pcapng", "name=", " tags = a,b"]) == {
        "count": "3", "inner": {"path": "a=b.pcapng"}, "name": "", "tags": " a,b"}


@pytest.mark.parametrize("item", ["count", "=3", " =x"])
def test_parse_set_rejects_malformed(item: str) -> None:
    with pytest.raises(UsageError, match="--set expects KEY=VALUE") as info:
        ss.parse_set([item])
    assert info.value.code == ExitCode.USAGE and info.value.hint


# -- apply: types --------------------------------------------------------------------------------------------
def test_apply_parses_text_by_field_type() -> None:
    toy = ss.apply(Toy(), {"name": "n", "count": "0x10", "ratio": "1.5", "on": "yes", "tags": "a, b,,c",
                           "limit": "null", "inner.path": "p", "inner.size": "2"})
    assert toy == Toy(name="n", count=16, ratio=1.5, on=True, tags=["a", "b", "c"], limit=None,
                      inner=Inner(path="p", size=2.0))
    assert ss.apply(Toy(), {"limit": "", "inner": {"path": "none"}}).limit is None
    assert ss.apply(Toy(), {"count": 3.0, "ratio": 2, "name": 80, "tags": ["x"], "limit": 7}) == Toy(
        name="80", count=3, ratio=2.0, tags=["x"], limit=7)


@pytest.mark.parametrize(("mapping", "message"), [
    ({"count": "three"}, "setting 'count': expected a whole number, got 'three'"),
    ({"count": True}, "setting 'count': expected a whole number"),
    ({"count": 1.5}, "setting 'count'"),
    ({"ratio": "fast"}, "setting 'ratio': expected a number"),
    ({"ratio": "nan"}, "NaN"),
    ({"on": "maybe"}, "setting 'on': expected true or false"),
    ({"name": True}, "setting 'name': expected text"),
    ({"tags": 5}, "expected a list"),
    ({"limit": "lots"}, "setting 'limit'"),
    ({"inner": "x"}, "setting 'inner' is a group"),
])
def test_apply_rejects_bad_values(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        ss.apply(Toy(), mapping)
    assert info.value.code == ExitCode.USAGE


def test_unknown_keys_name_the_source_and_suggest() -> None:
    with pytest.raises(UsageError, match=r"unknown setting 'cont' \(from env KSTAP_X\)") as info:
        ss.apply(Toy(), {"cont": 1}, origins={"cont": "env KSTAP_X"})
    assert info.value.hint is not None and "did you mean 'count'" in info.value.hint
    with pytest.raises(UsageError, match=r"unknown setting 'inner\.pth'") as info:
        ss.apply(Toy(), {"inner": {"pth": 1}})
    assert info.value.hint is not None and "inner.path" in info.value.hint


def test_parsers_for_special_text() -> None:
    toy = ss.apply(Toy(), {"ratio": "25%"}, parsers={"ratio": lambda s: float(s.rstrip("%")) / 100})
    assert toy.ratio == 0.25


# -- the config file -----------------------------------------------------------------------------------------
def test_load_file_default_named_and_env(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert ss.load_file(None, env) == (None, None)
    default = tmp_path / ".config" / "kstap" / "config.yaml"
    default.parent.mkdir(parents=True)
    default.write_text("count: 3\ninner:\n  path: a\nouter.x: 1\n")
    values, path = ss.load_file(None, env)
    assert path == default and values == {"count": 3, "inner": {"path": "a"}, "outer": {"x": 1}}
    xdg = tmp_path / "xdg" / "kstap" / "config.yaml"
    xdg.parent.mkdir(parents=True)
    xdg.write_text("")
    assert ss.load_file(None, {**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}) == ({}, xdg)
    other = tmp_path / "other.yaml"
    other.write_text("name: o\n")
    assert ss.load_file(None, {**env, "KSTAP_CONFIG": str(other)})[0] == {"name": "o"}
    assert ss.load_file(str(other), {**env, "KSTAP_CONFIG": "/missing"})[0] == {"name": "o"}


@pytest.mark.parametrize(("text", "message"), [
    ("count: [1\n", "not valid YAML at line 2"),
    ("- a\n- b\n", "must hold a mapping of settings, not list"),
])
def test_load_file_errors(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(UsageError, match=message):
        ss.load_file(str(bad), {})


def test_missing_named_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        ss.load_file(str(tmp_path / "nope.yaml"), {})
    with pytest.raises(UsageError, match="does not exist") as info:
        ss.load_file(None, {"KSTAP_CONFIG": str(tmp_path / "nope.yaml")})
    assert info.value.hint == "unset KSTAP_CONFIG"


# -- everything at once, on the real TapSettings ------------------------------------------------------------
def test_resolve_tap_settings_end_to_end(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile: staging\nbpf_filter: udp\nbuffer_mib: 64\noutput:\n  path: file.pcapng\n"
                   "sampling:\n  min_rate: 10%\n  memory_budget: 512Mi\n")
    env = {"HOME": str(tmp_path), "KSTAP_BUFFER_MIB": "128", "KSTAP_SAMPLING__RATE": "50%", "KSTAP_DEBUG": "1"}
    r = ss.resolve(TapSettings, config=str(cfg), env=env, set_items=["workers=2", "output.path=set.pcapng"],
                   flags={"output.path": "flag.pcapng"}, profiles=PROFILES, parsers=ss.tap_parsers())
    s = r.settings
    assert r.profile == "staging" and s.profile == "staging" and r.config_file == cfg
    assert s.sampling.mode == "auto"                 # from the profile named in the file
    assert s.bpf_filter == "udp" and s.sampling.min_rate == 0.1 and s.sampling.memory_budget == 512 << 20
    assert s.buffer_mib == 128 and s.sampling.rate == 0.5  # env over file
    assert s.workers == 2 and s.output.path == "flag.pcapng"  # named flag over --set
    assert r.origins["workers"] == "--set" and r.origins["output.path"] == "flag"
    assert r.origins["sampling.mode"] == "profile staging" and r.origins["buffer_mib"] == "env KSTAP_BUFFER_MIB"
    assert r.values["output"]["path"] == "flag.pcapng"


def test_resolve_profile_precedence_and_unknown_profile(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "KSTAP_PROFILE": "prod"}
    assert ss.resolve(TapSettings, env=env, profiles=PROFILES).settings.sampling.mode == "percentage"
    r = ss.resolve(TapSettings, env=env, flags={"profile": "dev"}, profiles=PROFILES)
    assert r.profile == "dev" and r.settings.sampling.mode == "full"
    r = ss.resolve(TapSettings, env=env, set_items=["sampling.mode=auto"], profiles=PROFILES)
    assert r.settings.sampling.mode == "auto"        # any flag beats the profile
    with pytest.raises(UsageError, match="unknown profile 'qa'"):
        ss.resolve(TapSettings, env={"HOME": str(tmp_path)}, flags={"profile": "qa"}, profiles=PROFILES)


def test_resolve_rejects_unknown_keys_from_each_source(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bpf_filtr: tcp\n")
    with pytest.raises(UsageError, match=r"unknown setting 'bpf_filtr' \(from file .*c.yaml\)"):
        ss.resolve(TapSettings, config=str(cfg), env={"HOME": str(tmp_path)})
    with pytest.raises(UsageError, match=r"unknown setting 'sampling.mod' \(from --set\)"):
        ss.resolve(TapSettings, env={"HOME": str(tmp_path)}, set_items=["sampling.mod=auto"])
    with pytest.raises(UsageError, match=r"setting 'sampling.rate' \(from --set\): bad rate"):
        ss.resolve(TapSettings, env={"HOME": str(tmp_path)}, set_items=["sampling.rate=lots"],
                   parsers=ss.tap_parsers())
    with pytest.raises(UsageError, match=r"setting 'workers' \(from env KSTAP_WORKERS\)"):
        ss.resolve(TapSettings, env={"HOME": str(tmp_path), "KSTAP_WORKERS": "many"})


def test_binary_config_file_is_a_usage_error_with_a_hint(cli, tmp_path: Path) -> None:
    from tests.conftest import assert_two_line_error

    path = tmp_path / "config.yaml"
    path.write_bytes(b"\x00\x01\x02\xff\xfe\x89PNG")
    res = cli("tap", "--config", str(path), "--read", str(tmp_path / "x.pcapng"))
    assert res.code == 2
    assert_two_line_error(res.err, f"config file {str(path)!r} is not UTF-8 text")
