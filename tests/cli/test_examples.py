"""Every example in examples/ runs (the shell scripts here; make_sample.py in the privileged tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KSTAP = str(Path(sys.executable).parent / "kstap")
SCRIPTS = sorted((REPO / "examples").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_example_runs(script: Path) -> None:
    r = subprocess.run(["bash", str(script), KSTAP], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_every_example_is_covered() -> None:
    examples = {p.name for p in (REPO / "examples").iterdir() if p.suffix in (".sh", ".py")}
    assert examples == {s.name for s in SCRIPTS} | {"make_sample.py"}
