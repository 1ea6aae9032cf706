"""Where settings come from, lowest precedence first: defaults < profile < config file < ``KSTAP_*``
environment < flags (``--set key=value`` and the named flags; a named flag beats ``--set``).

Layers are plain nested dicts keyed like the settings dataclasses (``output.path`` is
``{"output": {"path": ...}}``; dotted keys are accepted anywhere and nested). :func:`merge`
combines them, :func:`apply` writes the result onto a settings dataclass, checking every key
against its fields and every value against its type (strings from the environment and ``--set``
are parsed: ``true``/``false``, numbers, ``a,b`` lists, ``null`` or empty for None). Unknown keys
and bad values are usage errors (exit 2) that name where the value came from.

The environment only contributes variables that name a setting (``KSTAP_BPF_FILTER``,
``KSTAP_OUTPUT_PATH`` or ``KSTAP_OUTPUT__PATH``, ``KSTAP_SAMPLING_MODE``); other ``KSTAP_*``
variables (``KSTAP_DEBUG``, ``KSTAP_PURE_PYTHON``, ``KSTAP_CONFIG``) are left to their owners.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from kstap.errors import UsageError

ENV_PREFIX = "KSTAP_"
CONFIG_ENV = "KSTAP_CONFIG"
"""Environment variable naming the config file (``--config`` wins over it)."""
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})
NULL = frozenset({"", "null", "none", "~"})

T = TypeVar("T")
Parser = Callable[[str], object]


# -- layers as dicts ----------------------------------------------------------------------------------------
def to_mapping(obj: Any) -> dict[str, Any]:
    """A settings dataclass as a nested dict (lists copied)."""
    return dataclasses.asdict(obj)


def nest(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``{"output.path": x}`` → ``{"output": {"path": x}}``, recursively; plain nested dicts pass through."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        *path, last = str(key).split(".")
        if any(not part for part in [*path, last]):
            raise UsageError(f"bad setting name {key!r}", hint="names look like bpf_filter or output.path")
        target = out
        for part in path:
            nxt = target.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise UsageError(f"setting {key!r} conflicts with {part!r}",
                                 hint="'kstap config show' lists the settings and their dotted names")
            target = nxt
        value = nest(value) if isinstance(value, Mapping) else value
        if isinstance(value, dict) and isinstance(target.get(last), dict):
            target[last] = deep_merge(target[last], value)
        else:
            target[last] = value
    return out


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → ``{"output.path": x, ...}`` (lists are values, not branches)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: nested dicts merge, anything else (lists too) is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def env_names(defaults: Mapping[str, Any]) -> dict[str, str]:
    """Environment variable → dotted setting, for every setting in ``defaults``."""
    names: dict[str, str] = {}
    for dotted in flatten(defaults):
        names.setdefault(ENV_PREFIX + dotted.replace(".", "__").upper(), dotted)
        names.setdefault(ENV_PREFIX + dotted.replace(".", "_").upper(), dotted)
    return names


def env_layer(env: Mapping[str, str], defaults: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings named by ``KSTAP_*`` variables (values still strings) and, per dotted key, its variable."""
    found: dict[str, Any] = {}
    where: dict[str, str] = {}
    for var, dotted in env_names(defaults).items():
        if var in env and dotted not in where:
            found[dotted] = env[var]
            where[dotted] = var
    return nest(found), where


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``--set key=value`` items → a nested layer (values stay strings; :func:`apply` parses them)."""
    found: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}",
                             hint="e.g. --set sampling.mode=auto --set output.path=cap.pcapng")
        found[key.strip()] = value
    return nest(found)


def merge(defaults: dict[str, Any], profile: dict[str, Any] | None, file: dict[str, Any] | None,
          env: Mapping[str, str], flags: dict[str, Any]) -> dict[str, Any]:
    """All layers in precedence order (``env`` is the raw environment; see :func:`env_layer`)."""
    return merge_with_origins(defaults, profile, file, env, flags)[0]


def merge_with_origins(defaults: dict[str, Any], profile: dict[str, Any] | None, file: dict[str, Any] | None,
                       env: Mapping[str, str], flags: dict[str, Any], *, profile_name: str | None = None,
                       file_name: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """:func:`merge`, plus where each dotted setting's value came from (``default``, ``profile prod``,
    ``file PATH``, ``env KSTAP_X``, ``flag``)."""
    env_values, env_vars = env_layer(env, defaults)
    layers: list[tuple[dict[str, Any], Callable[[str], str]]] = [
        (nest(defaults), lambda k: "default"),
        (nest(profile or {}), lambda k: f"profile {profile_name}" if profile_name else "profile"),
        (nest(file or {}), lambda k: f"file {file_name}" if file_name else "file"),
        (env_values, lambda k: f"env {env_vars.get(k, ENV_PREFIX)}"),
        (nest(flags), lambda k: "flag"),
    ]
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for layer, label in layers:
        merged = deep_merge(merged, layer)
        for dotted in flatten(layer):
            origins[dotted] = label(dotted)
    return merged, origins


# -- the config file ----------------------------------------------------------------------------------------
def default_config_path(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/kstap/config.yaml``, else ``~/.config/kstap/config.yaml``."""
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base) / "kstap" / "config.yaml"


def load_file(path: str | None, env: Mapping[str, str]) -> tuple[dict[str, Any] | None, Path | None]:
    """The config file's settings and its path: ``path`` (``--config``), else ``$KSTAP_CONFIG``, else the
    default path. A missing default file is no file (None, None); a missing named one is a usage error."""
    named = path or env.get(CONFIG_ENV) or None
    where = Path(named).expanduser() if named else default_config_path(env)
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        if named:
            raise UsageError(f"config file {str(where)!r} does not exist",
                             hint="create it, or drop --config" if path else f"unset {CONFIG_ENV}") from None
        return None, None
    except PermissionError:
        if named:
            raise UsageError(f"cannot read config file {str(where)!r}: permission denied",
                             hint="make it readable for this user, or pass another --config FILE") from None
        return None, None  # another user's home (sudo -u, setpriv): the default file is not ours
    except UnicodeDecodeError as exc:
        raise UsageError(f"config file {str(where)!r} is not UTF-8 text (byte {exc.start})",
                         hint="a config file is YAML, e.g.  sampling: {mode: auto}; 'kstap config show' prints one"
                         ) from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {str(where)!r}: {exc.strerror or exc}",
                         hint="give a readable YAML file to --config") from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"config file {str(where)!r} is not valid YAML{at}: {problem}",
                         hint="fix the YAML there, or check it with 'kstap config show --config FILE'") from None
    if data is None:
        return {}, where
    if not isinstance(data, dict):
        raise UsageError(f"config file {str(where)!r} must hold a mapping of settings, not {type(data).__name__}",
                         hint="e.g.  bpf_filter: tcp port 80  and  sampling: {mode: auto}")
    return nest(data), where


# -- onto a dataclass ---------------------------------------------------------------------------------------
def apply(settings_obj: T, mapping: Mapping[str, Any], *, parsers: Mapping[str, Parser] | None = None,
          origins: Mapping[str, str] | None = None) -> T:
    """Set every value of ``mapping`` on ``settings_obj`` (in place; nested dataclasses recursively).

    ``parsers`` maps dotted keys to functions that parse string values (e.g. ``25%`` for a rate);
    ``origins`` (from :func:`merge_with_origins`) makes error messages name the source.
    """
    _apply(settings_obj, nest(mapping), "", parsers or {}, origins or {})
    return settings_obj


def _apply(obj: Any, mapping: Mapping[str, Any], prefix: str, parsers: Mapping[str, Parser],
           origins: Mapping[str, str]) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj) if f.init}
    hints = typing.get_type_hints(type(obj))
    for key, value in mapping.items():
        dotted = prefix + key
        if key not in fields:
            raise _unknown(dotted, list(fields), prefix, origins)
        tp = hints[key]
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            if not isinstance(value, Mapping):
                names = ", ".join(f.name for f in dataclasses.fields(current))
                raise UsageError(f"setting {dotted!r}{_from(dotted, origins)} is a group: give its keys",
                                 hint=f"e.g. {dotted}.{names.split(',')[0]}=…; its keys: {names}")
            _apply(current, value, dotted + ".", parsers, origins)
            continue
        setattr(obj, key, coerce(value, tp, dotted, parser=parsers.get(dotted), origin=_from(dotted, origins)))


def _from(dotted: str, origins: Mapping[str, str]) -> str:
    origin = origins.get(dotted) or next((o for k, o in origins.items() if k.startswith(dotted + ".")), "")
    return f" (from {origin})" if origin and origin != "default" else ""


def _unknown(dotted: str, known: list[str], prefix: str, origins: Mapping[str, str]) -> UsageError:
    close = difflib.get_close_matches(dotted, [prefix + k for k in known], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return UsageError(f"unknown setting {dotted!r}{_from(dotted, origins)}",
                      hint=hint + "'kstap config show' lists every setting")


def coerce(value: Any, tp: Any, key: str, *, parser: Parser | None = None, origin: str = "") -> Any:
    """``value`` as type ``tp`` (str, int, float, bool, X | None, list[X]); strings are parsed."""
    try:
        if parser is not None and isinstance(value, str) and value.strip().lower() not in NULL:
            return parser(value)
        return _coerce(value, tp)
    except UsageError as exc:
        raise UsageError(f"setting {key!r}{origin}: {exc.message}", hint=exc.hint) from None
    except (TypeError, ValueError) as exc:
        raise UsageError(f"setting {key!r}{origin}: {exc}", hint=f"it takes {_type_name(tp)}") from None


def _coerce(value: Any, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in NULL)):
            return None
        options = [a for a in args if a is not type(None)]
        first: Exception | None = None
        for option in options:
            try:
                return _coerce(value, option)
            except (TypeError, ValueError) as exc:
                first = first or exc
        raise first or TypeError(f"expected {_type_name(tp)}")
    if origin is list:
        item = args[0] if args else str
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {value!r}")
        return [_coerce(v, item) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
            return value.strip().lower() in TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise TypeError(f"expected a whole number, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip(), 0)
            except ValueError:
                raise ValueError(f"expected a whole number, got {value!r}") from None
        raise TypeError(f"expected a whole number, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        if isinstance(value, int | float):
            result = float(value)
        elif isinstance(value, str):
            try:
                result = float(value.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        else:
            raise TypeError(f"expected a number, got {value!r}")
        if math.isnan(result):
            raise ValueError("expected a number, got NaN")
        return result
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise TypeError(f"expected text, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise TypeError(f"expected {_type_name(tp)}, got {value!r}")


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"a comma-separated list of {_type_name(args[0]) if args else 'text'}"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(tp, str(tp))


# -- everything at once ---------------------------------------------------------------------------------------
@dataclass
class Resolved(Generic[T]):
    """The settings to run with, and how they were made."""

    settings: T
    values: dict[str, Any]
    """The settings as a nested dict (after type checks)."""
    origins: dict[str, str]
    """Dotted key → where its value came from."""
    config_file: Path | None
    profile: str | None


def resolve(factory: Callable[[], T], *, config: str | None = None, env: Mapping[str, str] | None = None,
            set_items: Sequence[str] = (), flags: Mapping[str, Any] | None = None,
            profiles: Mapping[str, Mapping[str, Any]] | None = None,
            parsers: Mapping[str, Parser] | None = None) -> Resolved[T]:
    """Build settings from every source. ``factory()`` gives the defaults (e.g. ``TapSettings``).

    The profile's name may itself come from any layer above it (``profile:`` in the file,
    ``KSTAP_PROFILE``, ``--profile``); the highest one wins, and its preset sits just above the defaults.
    ``flags`` holds only the flags given on the command line (see ``kstap.cli.config_cmd.explicit_flags``).
    """
    environ = os.environ if env is None else env
    defaults = to_mapping(factory())
    file_values, path = load_file(config, environ)
    env_values, _ = env_layer(environ, defaults)
    flag_values = deep_merge(parse_set(set_items), nest(flags or {}))
    name = next((layer["profile"] for layer in (flag_values, env_values, file_values or {})
                 if layer.get("profile") not in (None, "")), None)
    preset: dict[str, Any] | None = None
    if name is not None:
        name = str(name)
        if not profiles or name not in profiles:
            raise UsageError(f"unknown profile {name!r}", hint=f"choose one of: {', '.join(profiles or {}) or '-'}")
        preset = nest(profiles[name])
    merged, origins = merge_with_origins(defaults, preset, file_values, environ, flag_values,
                                         profile_name=name, file_name=str(path) if path else None)
    named = flatten(nest(flags or {}))
    for dotted in flatten(parse_set(set_items)):
        if dotted not in named:
            origins[dotted] = "--set"
    settings = apply(factory(), merged, parsers=parsers, origins=origins)
    return Resolved(settings, to_mapping(settings), origins, path, name)


def tap_parsers() -> dict[str, Parser]:
    """Parsers for TapSettings values written as text: rates as ``25%``, sizes as ``512Mi``, seeds as ``0x…``."""
    from kstap import config

    parsers: dict[str, Parser] = {}
    for key, name in (("sampling.rate", "parse_rate"), ("sampling.min_rate", "parse_rate"),
                      ("sampling.memory_budget", "parse_size"), ("sampling.seed", "parse_seed")):
        fn = getattr(config, name, None)
        if fn is not None:
            parsers[key] = fn
    return parsers
