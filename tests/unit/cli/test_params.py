"""Help reads as kubectl's and tcpdump's do: -h everywhere, NAMESPACE / EXPR / FILE metavars, bare flags."""

from __future__ import annotations

import re

import pytest

from kstap.cli.app import build_app
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
