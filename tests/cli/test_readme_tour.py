"""The README's quick tour runs as written after ``make demo``: every line, in a fresh folder holding what
``make demo`` leaves (``demo.pcapng``: the shipped sample was recorded by the demo), with the PATH the
tour's first line sets. The live line (``-i lo``) runs when the test runs as root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"


def tour_lines() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Quick tour"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_tour_starts_by_putting_kstap_on_path() -> None:
    assert tour_lines()[0] == 'export PATH="$PWD/.venv/bin:$PATH"'
    assert "export PATH" in (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]


@pytest.mark.parametrize("line", tour_lines()[1:])
def test_each_line_of_the_tour_runs(line: str, tmp_path: Path) -> None:
    if " -i " in line and os.geteuid() != 0:
        pytest.skip("live capture needs root")
    shutil.copyfile(ROOT / "examples" / "sample.pcapng", tmp_path / "demo.pcapng")
    venv_bin = Path(sys.executable).parent
    (tmp_path / ".venv").symlink_to(venv_bin.parent)  # the project's venv, where make demo put kstap
    script = "set -eo pipefail\n" + tour_lines()[0] + "\n"
    # what earlier lines wrote, for the lines that read it (stats/report/dissect of their outputs)
    script += "kstap tap --read demo.pcapng -f 'tcp port 80' -w web.pcapng 2>/dev/null\n"
    script += "kstap tap --read demo.pcapng --rate 10% --seed 1 -w prod.pcapng 2>/dev/null\n"
    script += line.split("  #", 1)[0] + "\n"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, f"{line}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert "error" not in r.stderr.replace("dropped by kernel", "").lower() or "tshark" in line, r.stderr
