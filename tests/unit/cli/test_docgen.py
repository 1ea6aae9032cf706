"""docs/cli.md's command reference is generated from the Typer app and must be current."""

from __future__ import annotations

from pathlib import Path

import pytest

from kstap.cli import docgen
from kstap.cli.app import build_app

DOCS = Path(__file__).resolve().parents[3] / "docs" / "cli.md"


def test_docs_cli_md_is_current() -> None:
    current = DOCS.read_text(encoding="utf-8")
    assert docgen.update(current) == current, "docs/cli.md is stale: run 'make docs' and commit the result"


def test_every_command_and_option_is_documented() -> None:
    reference = docgen.render_reference()
    app = build_app()
    root = app.context_class(app, info_name="kstap")
    for command, ctx in docgen._commands(app, root):
        assert f"### `{ctx.command_path}`" in reference
        for param in command.get_params(ctx):
            if param.param_type_name == "argument":
                assert f"`{str(param.metavar or param.name).upper()}`" in reference
            elif "--help" not in param.opts and not getattr(param, "hidden", False):
                assert any(f"`{opt}" in reference or f", {opt}" in reference for opt in param.opts), param.opts
    assert "### `kstap config show`" in reference and "`--set KEY=VALUE` (repeatable)" in reference
    assert "`--version`" in reference and "`--install-completion`" in reference


def test_hand_written_sections_are_kept() -> None:
    text = "# title\n\n## Exit codes\nkeep me\n\n" + docgen.BEGIN + "\nold\n" + docgen.END + "\n\ntail\n"
    out = docgen.update(text, reference="NEW\n")
    assert out == "# title\n\n## Exit codes\nkeep me\n\n" + docgen.BEGIN + "\n\nNEW\n\n" + docgen.END + "\n\ntail\n"
    assert docgen.update(out, reference="NEW\n") == out
    with pytest.raises(ValueError, match="markers"):
        docgen.update("no markers", reference="x")


def test_check_mode(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text(f"intro\n{docgen.BEGIN}\nold\n{docgen.END}\n")
    assert docgen.main([str(stale), "--check"]) == 1
    assert docgen.main([str(stale)]) == 0
    assert docgen.main([str(stale), "--check"]) == 0
    assert stale.read_text().startswith("intro\n")
