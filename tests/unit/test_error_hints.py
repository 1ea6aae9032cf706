"""Every error kstap raises carries a ``hint:`` line (docs/cli.md promises one; issue 16 found ~20 without)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import kstap
from kstap.cli.main import FALLBACK_HINT

PACKAGE = Path(kstap.__file__).parent
SELF_HINTING = {"ProtocolError", "TransportError"}
"""Classes whose __init__ gives a hint when the caller has none (checked below)."""


def _error_classes(trees: dict[Path, ast.Module]) -> set[str]:
    """KstapError and every class that derives from it anywhere in the package (by name, to a fixpoint)."""
    names = {"KstapError"}
    grew = True
    while grew:
        grew = False
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in names and any(
                        (b.id if isinstance(b, ast.Name) else getattr(b, "attr", None)) in names for b in node.bases):
                    names.add(node.name)
                    grew = True
    return names


def test_every_error_constructed_in_the_package_has_a_hint() -> None:
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}
    errors = _error_classes(trees)
    assert {"UsageError", "EnvironmentProblem", "WorkerFailure", "OutputFailed", "DiskFull"} <= errors
    missing = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            # a class whose __init__ builds its own hint takes more than the message (ForeignFile(path, uid))
            hinted = any(k.arg == "hint" for k in node.keywords)
            if name in errors and name not in SELF_HINTING and len(node.args) < 2 and not hinted:
                missing.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {name}(...)")
    assert missing == []


def test_hints_name_no_host_interface() -> None:
    """A hint shows the syntax with the IFACE placeholder docs/cli.md uses, never a host NIC name (the
    eth, ens, enp … families) that a user may copy onto the host's uplink."""
    nic = re.compile(r"-i\s+(eth|ens|enp|eno|wlan|wlp|em|bond)\d")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "hint":
                text = " ".join(c.value for c in ast.walk(node.value)
                                if isinstance(c, ast.Constant) and isinstance(c.value, str))
                if nic.search(text):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.value.lineno} {text!r}")
    assert found == []


def test_self_hinting_errors_give_a_hint() -> None:
    from kstap.remote.protocol import ProtocolError
    from kstap.remote.transport import TransportError

    assert {c.__name__ for c in (ProtocolError, TransportError)} == SELF_HINTING
    for cls in (ProtocolError, TransportError):
        assert cls("x").hint


def test_an_error_without_a_hint_still_prints_a_hint_line(capsys) -> None:
    from kstap.cli.main import _print_error

    _print_error("something broke", None)
    assert capsys.readouterr().err.splitlines() == ["kstap: error: something broke", f"hint: {FALLBACK_HINT}"]
