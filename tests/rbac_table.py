"""docs/kubernetes.md's RBAC table ("What the person running kstap needs"), parsed: one source for the fake
API server's RBAC test (tests/kube/test_rbac.py) and the real cluster's (tests/cluster/test_rbac_real.py)."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "kubernetes.md"

Grant = tuple[str, str, str, str]
"""(verb, API group, resource, where): where is ``cluster``, ``worker namespace`` or ``target namespaces``."""


def documented() -> tuple[set[Grant], set[Grant], set[Grant]]:
    """docs/kubernetes.md's table → (always needed, optional, needed with -A only)."""
    text = DOC.read_text()
    table = text.split("<!-- rbac-cli-table -->")[1].split("<!-- /rbac-cli-table -->")[0]
    always: set[Grant] = set()
    optional: set[Grant] = set()
    with_all: set[Grant] = set()
    for line in table.strip().splitlines()[2:]:
        resource, group, where, verbs, _why = (c.strip(" `") for c in line.strip().strip("|").split("|"))
        group = "" if group == "core" else group
        only_all = where.endswith("with -A")
        where = where.removesuffix(", with -A")
        for verb in (v.strip() for v in verbs.split(",")):
            name = verb.removesuffix(" (optional)")
            grant = (name, group, resource, where)
            (with_all if only_all else optional if name != verb else always).add(grant)
    return always, optional, with_all
