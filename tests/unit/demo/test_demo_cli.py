"""kstap demo's promises that need no network: it says why its rate moves, and it writes no tracked file."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kstap.cli.demo import demo, rate_explanation
from kstap.config import TapSettings
from tests.conftest import ROOT


def test_auto_mode_says_why_the_rate_starts_at_10_percent_and_climbs() -> None:
    settings = TapSettings(interfaces=["x"])
    settings.sampling.mode, settings.sampling.rate, settings.sampling.memory_budget = "auto", 0.1, 256 << 20
    line = rate_explanation(settings)
    assert line is not None and "starts at 10% of flows" in line and "256 MiB" in line and "climb" in line
    settings.sampling.mode = "full"
    assert rate_explanation(settings) is None


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_the_demo_writes_no_tracked_file() -> None:
    import inspect

    defaults = {p.name: p.default.default for p in inspect.signature(demo).parameters.values()}
    outputs = [defaults["write"], defaults["entries"]]
    tracked = subprocess.run(["git", "ls-files", "--", *outputs], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert tracked == [], f"make demo would rewrite tracked files: {tracked}"
    ignored = subprocess.run(["git", "check-ignore", *outputs], cwd=ROOT, capture_output=True, text=True,
                             check=False).stdout.split()
    assert sorted(ignored) == sorted(outputs)
