"""Help reads as kubectl's and tcpdump's do: -h everywhere, NAMESPACE / EXPR / FILE metavars, bare flags."""

from __future__ import annotations

import re

import pytest

from kstap.cli.app import COMMANDS, build_app
from kstap.cli.docgen import _commands


def _leaf_paths() -> list[list[str]]:
    root = build_app()
    ctx = root.context_class(root, info_name="kstap")
    return [cmd_ctx.command_path.split()[1:] for _cmd, cmd_ctx in _commands(root, ctx)]


LEAVES = _leaf_paths()


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(p) for p in LEAVES])
def test_every_command_takes_h_and_shows_no_python_types(cli, path: list[str]) -> None:
    res = cli(*path, "-h")
    assert res.code == 0, res.err
    assert f"Usage: kstap {' '.join(path)}" in res.out
    assert res.out == cli(*path, "--help").out
    types = re.findall(r"<(?:list\[)?(?:str|int|float|bool)\]?>", res.out)
    assert types == [], f"Python types in the help of kstap {' '.join(path)}: {types}"


def test_tap_metavars_are_kubectl_and_tcpdump_words(cli) -> None:
    out = cli("tap", "-h").out
    for option, word in (("--namespace", "NAMESPACE"), ("--bpf-filter", "EXPR"), ("--write", "FILE"),
                         ("--interface", "IFACE"), ("--count", "COUNT"), ("--memory-budget", "SIZE"),
                         ("--mode", "MODE"), ("--set", "KEY=VALUE")):
        row = next(line for line in out.splitlines() if f"{option} " in line)
        assert word in row, row
    flag_row = next(line for line in out.splitlines() if "--all-namespaces" in line)
    assert re.search(r"-A\s+Pods", flag_row), flag_row  # a bare flag: nothing between it and its help


def test_root_h(cli) -> None:
    res = cli("-h")
    assert res.code == 0 and "Usage: kstap [OPTIONS] COMMAND" in res.out


def _shape(command: object) -> object:
    """What a command offers: its help, its parameters as declared, its subcommands' shapes."""
    params = [(p.name, tuple(p.opts), p.metavar, getattr(p, "help", None), p.default, p.required)
              for p in getattr(command, "params", [])]
    subs = {name: _shape(sub) for name, sub in (getattr(command, "commands", None) or {}).items()}
    return getattr(command, "help", None), params, subs


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_command_built_alone_is_the_one_in_the_whole_tree(name: str) -> None:
    whole, alone = build_app(), build_app(only=name)
    assert list(alone.commands) == [name]
    assert _shape(alone.commands[name]) == _shape(whole.commands[name])
    assert [p.name for p in alone.params] == [p.name for p in whole.params]  # --version, completion


def test_unknown_or_no_command_builds_the_whole_tree() -> None:
    assert set(build_app(only="disect").commands) == set(COMMANDS)
    assert set(build_app(only=None).commands) == set(COMMANDS)
