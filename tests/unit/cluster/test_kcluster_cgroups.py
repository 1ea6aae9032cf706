"""cluster/kcluster.py's cgroup walk (`make cluster-down`): cgroups that vanish while it walks are skipped.

The real cluster showed it: `down` raised FileNotFoundError when runc removed a container's cgroup between
listing its parent and entering it, and left the cluster running.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "cluster"))
import kcluster


def test_deepest_first_and_a_vanished_cgroup_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = tmp_path / "kstap-e2e"
    for rel in ("n1/kubepods/pod1/ctr1", "n1/kubepods/pod2", "n2"):
        (top / rel).mkdir(parents=True)
    gone = top / "n1" / "kubepods" / "pod1"
    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str]) -> object:
        if Path(path) == gone:  # removed after its parent was listed
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    dirs = kcluster.cgroup_dirs(top)
    assert dirs[-1] == top
    assert [len(d.parts) for d in dirs] == sorted((len(d.parts) for d in dirs), reverse=True)
    assert {d.relative_to(top).as_posix() for d in dirs} == {".", "n1", "n1/kubepods", "n1/kubepods/pod2", "n2"}
    assert kcluster.cgroup_dirs(tmp_path / "missing") == []
