"""``kstap report FILE -o report.html``: a self-contained page, checked as a person would look at it.

The capture is the shipped demo sample replayed in percentage mode (so it carries sampling comments);
Debian's chromium renders the page headless (no network, a fresh profile) to a PNG screenshot that the
test then looks at: the rate line is drawn at 50 %, and the bars are there in their colours.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, _env

SAMPLE = ROOT / "examples" / "sample.pcapng"
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
RATE_BLUE = (0x2F, 0x6F, 0xDF)
PROTO_GREEN = (0x3A, 0x9D, 0x6E)
ENDPOINT_PURPLE = (0x8A, 0x63, 0xC8)


def _kstap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kstap", *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    sampled = tmp / "sampled.pcapng"
    r = _kstap("tap", "--read", str(SAMPLE), "--mode", "percentage", "--rate", "50%", "--seed", "3",
               "-w", str(sampled))
    assert r.returncode == 0, r.stderr
    out = tmp / "report.html"
    r = _kstap("report", str(sampled), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert f"kstap: wrote {out}" in r.stderr
    return out


def test_the_page_is_self_contained(page: Path) -> None:
    text = page.read_text()
    assert text.startswith("<!doctype html>")
    assert "<script" not in text and "<link" not in text and "src=" not in text and "@import" not in text
    assert set(re.findall(r"https?://[^\s\"'<>)]+", text)) == {"http://www.w3.org/2000/svg"}  # a namespace name
    assert text.count("<svg") == 6
    for heading in ("Sampling rate over the capture", "Flows kept against flows estimated", "Packets and kernel drops",
                    "Protocols", "Top endpoints"):
        assert heading in text
    assert "percentage mode, rate 0.5" in text
    assert "http/1.1" in text and "dns" in text and "GET /api/items @ 10.213.77.2" in text


def test_usage_errors(tmp_path: Path) -> None:
    r = _kstap("report", str(tmp_path / "missing.pcapng"))
    assert r.returncode == 2 and r.stderr.startswith("kstap: error: cannot read") and "\nhint: " in r.stderr
    copy = tmp_path / "c.pcapng"
    shutil.copyfile(SAMPLE, copy)
    r = _kstap("report", str(copy), "-o", str(copy))
    assert r.returncode == 2 and "would overwrite the --read file" in r.stderr
    assert copy.read_bytes() == SAMPLE.read_bytes()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make system-deps)")
def test_chromium_renders_what_the_page_promises(page: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "report.png"
    assert CHROMIUM is not None
    r = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                        "--window-size=900,2000", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (900, 2000)

    def rows_with(colour: tuple[int, int, int]) -> list[int]:
        px = image.load()
        return [y for y in range(image.height)
                if sum(1 for x in range(0, image.width, 3) if px[x, y] == colour) >= 10]

    blue = rows_with(RATE_BLUE)
    assert blue, "the rate line and the kept bars are drawn"
    green, purple = rows_with(PROTO_GREEN), rows_with(ENDPOINT_PURPLE)
    assert green and purple, "the protocol and endpoint bars are drawn"
    assert blue[0] < green[0] < purple[0], "in the page's order: rate, protocols, endpoints"
    # the rate line: a flat run of blue rows, half-way between the chart's 0 % and 100 % grid lines
    first_run = [y for y in blue if y - blue[0] < 40]
    assert max(first_run) - min(first_run) <= 4, "a flat line at one rate"
