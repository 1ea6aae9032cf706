"""``kstap config show``: the settings kstap would run with, and where each came from.

Also the glue commands use to build their settings from every source
(:func:`resolve_tap_settings`, :func:`explicit_flags`); the merging itself is
:mod:`kstap.settings_sources`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import typer

from kstap.errors import ExitCode

if TYPE_CHECKING:
    from kstap.config import TapSettings
    from kstap.settings_sources import Resolved

app = typer.Typer(
    name="config",
    help="Show the settings kstap would use: defaults < profile < config file < KSTAP_* env < flags.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
)

TAP_FLAG_KEYS: dict[str, str] = {
    "interface": "interfaces",
    "bpf_filter": "bpf_filter",
    "write": "output.path",
    "duration": "duration",
    "count": "count",
    "snaplen": "snaplen",
    "buffer_size": "buffer_mib",
    "workers": "workers",
    "read": "read",
    "realtime": "realtime",
    "capture": "capture",
    "netns": "netns",
    "dedup_window": "dedup_window_ms",
    "rotate_mb": "output.rotate_mb",
    "ring_files": "output.ring_files",
    "rotate_seconds": "output.rotate_seconds",
    "max_drop": "max_drop",
    "profile": "profile",
    "mode": "sampling.mode",
    "cpu_budget": "sampling.cpu_budget",
    "entries": "entries",
    "dissect_memory": "dissect_memory_mib",
}
"""``kstap tap`` parameter name → TapSettings dotted key, for the flags that map one to one."""


def explicit_flags(ctx: Any, params: Mapping[str, str]) -> dict[str, Any]:
    """The flags the user gave on the command line (not Typer's defaults), as dotted settings.

    ``params`` maps the command's parameter names to dotted setting keys (e.g. :data:`TAP_FLAG_KEYS`);
    parameters the command does not have are skipped.
    """
    found: dict[str, Any] = {}
    for name, key in params.items():
        if name not in ctx.params:
            continue
        source = ctx.get_parameter_source(name)
        if source is not None and source.name == "COMMANDLINE":
            found[key] = ctx.params[name]
    return found


def resolve_tap_settings(ctx: Any = None, *, config: str | None = None, set_items: Sequence[str] = (),
                         flags: Mapping[str, Any] | None = None, flag_keys: Mapping[str, str] = TAP_FLAG_KEYS,
                         env: Mapping[str, str] | None = None) -> Resolved[TapSettings]:
    """TapSettings from defaults < profile < file < env < flags.

    The flags are ``explicit_flags(ctx, flag_keys)`` (when ``ctx`` is given) overlaid with ``flags``
    (values the command computed itself, e.g. a parsed ``--rate``; dotted keys).
    """
    from kstap import settings_sources
    from kstap.config import TapSettings

    given = explicit_flags(ctx, flag_keys) if ctx is not None else {}
    given.update(flags or {})
    return settings_sources.resolve(TapSettings, config=config, env=os.environ if env is None else env,
                                    set_items=set_items, flags=given, profiles=_profiles(),
                                    parsers=settings_sources.tap_parsers())


def _profiles() -> dict[str, dict[str, Any]]:
    from kstap import config

    return dict(getattr(config, "PROFILES", {}))


@app.command("show")
def show(
    json_output: bool = typer.Option(False, "--json", help="Print JSON: settings, origins, config file, profile."),
    config: str | None = typer.Option(None, "--config", metavar="FILE",
                                      help="Config file (default: $KSTAP_CONFIG or ~/.config/kstap/config.yaml)."),
    set_items: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                        help="Set any setting, e.g. sampling.mode=auto (repeatable)."),
    profile: str | None = typer.Option(None, "--profile", help="Preset: dev, staging or prod."),
) -> int:
    """Print the merged settings of 'kstap tap' and where each value came from."""
    resolved = resolve_tap_settings(config=config, set_items=set_items,
                                    flags={"profile": profile} if profile else None)
    if json_output:
        print(json.dumps({"config_file": str(resolved.config_file) if resolved.config_file else None,
                          "profile": resolved.profile, "settings": resolved.values,
                          "origins": resolved.origins}, indent=2, sort_keys=True))
        return int(ExitCode.OK)
    for line in render_table(resolved):
        print(line)
    return int(ExitCode.OK)


def render_table(resolved: Resolved[Any]) -> list[str]:
    """``key  value  origin`` lines, values as JSON, after a comment naming the config file."""
    from kstap.settings_sources import flatten

    where = str(resolved.config_file) if resolved.config_file else "none found"
    lines = [f"# config file: {where}" + (f"; profile: {resolved.profile}" if resolved.profile else "")]
    flat = flatten(resolved.values)
    key_w = max(len(k) for k in flat)
    shown = {k: json.dumps(v) for k, v in flat.items()}
    val_w = min(40, max(len(v) for v in shown.values()))
    for key in sorted(flat):
        lines.append(f"{key:<{key_w}}  {shown[key]:<{val_w}}  {resolved.origins.get(key, 'default')}".rstrip())
    return lines
