"""The Typer application: one module per command, registered here."""

from __future__ import annotations

from typing import Any

import typer

from kstap import __version__


def _version(value: bool) -> None:
    if value:
        print(f"kstap {__version__}")
        raise typer.Exit(0)


def build_app() -> Any:
    from kstap.cli import demo, dissect_cmd, filter_cmd, tap

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

    app.command("tap")(tap.tap)
    app.command("filter")(filter_cmd.filter_command)
    app.command("demo")(demo.demo)
    app.command("dissect")(dissect_cmd.dissect)
    from kstap.cli import stats_cmd
    app.command("stats")(stats_cmd.stats)
    from kstap.cli import report_cmd
    app.command("report")(report_cmd.report)
    from kstap.cli import tune_cmd
    app.command("tune")(tune_cmd.tune)
    from kstap.cli import config_cmd
    app.add_typer(config_cmd.app, name="config")
    from kstap.cli import worker_cmd
    app.command("worker")(worker_cmd.worker)
    from kstap.cli import repair_cmd
    app.command("repair")(repair_cmd.repair)
    from kstap.cli import kube_cmds
    app.command("manifests")(kube_cmds.manifests)
    app.command("clean")(kube_cmds.clean)
    from kstap.cli.params import polish

    return polish(typer.main.get_command(app))
