"""``kstap config show`` and the helpers commands use to build settings from every source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from kstap.cli import config_cmd


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import os

    for var in list(os.environ):
        if var.startswith("KSTAP_") or var == "XDG_CONFIG_HOME":
            monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_show_prints_every_setting_and_its_origin(cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / ".config" / "kstap" / "config.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("buffer_mib: 64\n")
    monkeypatch.setenv("KSTAP_BPF_FILTER", "tcp")
    res = cli("config", "show", "--profile", "staging", "--set", "sampling.rate=25%")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert lines[0] == f"# config file: {cfg}; profile: staging"
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[1:]}
    assert rows["bpf_filter"] == ['"tcp"', "env KSTAP_BPF_FILTER"]
    assert rows["buffer_mib"] == ["64", f"file {cfg}"]
    assert rows["sampling.mode"] == ['"auto"', "profile staging"]
    assert rows["sampling.rate"] == ["0.25", "--set"]
    assert rows["snaplen"] == ["262144", "default"]


def test_show_json(cli: Any) -> None:
    res = cli("config", "show", "--json", "--set", "output.path=x.pcapng")
    assert res.code == 0
    data = json.loads(res.out)
    assert data["config_file"] is None and data["profile"] is None
    assert data["settings"]["output"]["path"] == "x.pcapng" and data["origins"]["output.path"] == "--set"


@pytest.mark.parametrize(("args", "first_line"), [
    (["--set", "bpf_filtr=x"], "kstap: error: unknown setting 'bpf_filtr' (from --set)"),
    (["--set", "workers"], "kstap: error: --set expects KEY=VALUE, got 'workers'"),
    (["--config", "/nonexistent/k.yaml"], "kstap: error: config file '/nonexistent/k.yaml' does not exist"),
    (["--profile", "qa"], "kstap: error: unknown profile 'qa'"),
])
def test_show_usage_errors(cli: Any, two_line_error: Any, args: list[str], first_line: str) -> None:
    res = cli("config", "show", *args)
    assert res.code == 2 and res.out == ""
    two_line_error(res.err, "")
    assert res.err_lines[0] == first_line


def test_explicit_flags_only_takes_what_was_typed() -> None:
    seen: dict[str, Any] = {}
    app = typer.Typer()

    @app.command()
    def tap(ctx: typer.Context, write: str | None = typer.Option(None, "-w"),
            workers: int = typer.Option(1, "--workers"), snaplen: int = typer.Option(262144, "--snaplen")) -> None:
        seen.update(config_cmd.explicit_flags(ctx, config_cmd.TAP_FLAG_KEYS))

    result = CliRunner().invoke(app, ["-w", "a.pcapng", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert seen == {"output.path": "a.pcapng", "workers": 1}  # --snaplen took its default: not a flag


def test_resolve_tap_settings_with_computed_flags() -> None:
    r = config_cmd.resolve_tap_settings(flags={"sampling.mode": "auto", "interfaces": ["veth0"]},
                                        set_items=["sampling.mode=full"], env={})
    assert r.settings.sampling.mode == "auto" and r.settings.interfaces == ["veth0"]
    assert r.origins["sampling.mode"] == "flag"
