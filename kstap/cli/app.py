"""The Typer application: one module per command, registered here."""

from __future__ import annotations

from typing import Any

import typer

from kstap import __version__


def _version(value: bool) -> None:
    if value:
        print(f"kstap {__version__}")
        raise typer.Exit(0)


COMMANDS = {
    "tap": ("tap", "tap"), "filter": ("filter_cmd", "filter_command"), "demo": ("demo", "demo"),
    "dissect": ("dissect_cmd", "dissect"), "stats": ("stats_cmd", "stats"), "report": ("report_cmd", "report"),
    "tune": ("tune_cmd", "tune"), "config": ("config_cmd", "app"), "worker": ("worker_cmd", "worker"),
    "repair": ("repair_cmd", "repair"), "manifests": ("kube_cmds", "manifests"), "clean": ("kube_cmds", "clean"),
}
"""Command name → (module in kstap.cli, its function; or the Typer app of a command group), in help order."""


def build_app(only: str | None = None) -> Any:
    """The click command tree. ``only``: the command about to run; the others are left out, so their
    modules (and what they import) are not loaded (``kstap dissect`` starts ~0.05 s sooner). Help,
    completion and unknown names get the whole tree."""
    import importlib

    app = typer.Typer(
        name="kstap",
        help="Capture Kubernetes or local traffic into Wireshark-ready pcapng, sampling whole flows.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        pretty_exceptions_show_locals=False,
        add_completion=True,
        context_settings={"help_option_names": ["-h", "--help"]},  # = kstap.cli.params.HELP_OPTIONS
    )

    @app.callback()
    def root(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                     help="Print the version and exit."),
    ) -> None:
        """kstap: flow-sampling traffic capture on a resource budget."""

    for name, (module, attr) in COMMANDS.items():
        if only in COMMANDS and name != only:
            continue
        target = getattr(importlib.import_module(f"kstap.cli.{module}"), attr)
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)
    from kstap.cli.params import polish

    return polish(typer.main.get_command(app))
