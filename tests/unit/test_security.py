"""Security properties that need no root: private output files, no seed in any output, and flow
selection that a sender who does not know the seed cannot steer (docs/security.md)."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kstap.private_file import ForeignFile, open_private
from kstap.sampling.flowhash import flow_hash, seed2, seed_id, threshold
from kstap.sampling.flowkey import FlowKey

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample.pcapng"
SEED = 0x5EED1234


def kstap(*args: str, cwd: Path, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100")
    env.pop("KSTAP_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "kstap", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False, preexec_fn=lambda: os.umask(umask))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- files are private -----------------------------------------------------------------------------------

def test_every_file_kstap_writes_is_0600_even_with_umask_0(tmp_path: Path) -> None:
    r = kstap("tap", "--read", str(SAMPLE), "-w", "cap.pcapng", "--entries", "e.ndjson", cwd=tmp_path, umask=0)
    assert r.returncode == 0, r.stderr
    r = kstap("tap", "--read", str(SAMPLE), "-w", "ring.pcapng", "-C", "0.01", cwd=tmp_path, umask=0)
    assert r.returncode == 0, r.stderr
    rotated = sorted(tmp_path.glob("ring_*.pcapng"))
    assert len(rotated) >= 2
    (tmp_path / "cut.pcapng").write_bytes((tmp_path / "cap.pcapng").read_bytes()[:-9])
    r = kstap("repair", "cut.pcapng", "-o", "fixed.pcapng", cwd=tmp_path, umask=0)
    assert r.returncode == 0, r.stderr
    for f in [tmp_path / "cap.pcapng", tmp_path / "e.ndjson", tmp_path / "fixed.pcapng", *rotated]:
        assert mode(f) == 0o600, f"{f.name} is {oct(mode(f))}"


def test_an_existing_readable_file_is_narrowed_to_0600(tmp_path: Path) -> None:
    for name in ("cap.pcapng", "e.ndjson"):
        (tmp_path / name).write_bytes(b"old contents that must go")
        (tmp_path / name).chmod(0o644)
    r = kstap("tap", "--read", str(SAMPLE), "-w", "cap.pcapng", "--entries", "e.ndjson", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert mode(tmp_path / "cap.pcapng") == mode(tmp_path / "e.ndjson") == 0o600
    assert not (tmp_path / "cap.pcapng").read_bytes().startswith(b"old")


def test_open_private(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        fd = open_private(str(tmp_path / "new"))
        os.close(fd)
        assert mode(tmp_path / "new") == 0o600
        existing = tmp_path / "existing"
        existing.write_bytes(b"x" * 100)
        existing.chmod(0o664)
        os.close(open_private(str(existing)))
        assert mode(existing) == 0o600 and existing.stat().st_size == 0
        os.close(open_private(os.devnull))  # a character device is written as it is
        assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    finally:
        os.umask(old)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file of another user needs root")
def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    """A file planted by someone else (a shared directory, /tmp) would hand them the capture."""
    planted = tmp_path / "planted.pcapng"
    planted.write_bytes(b"")
    os.chown(planted, 65534, 65534)
    with pytest.raises(ForeignFile):
        os.close(open_private(str(planted)))
    r = kstap("tap", "--read", str(SAMPLE), "-w", str(planted), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "belongs to another user (uid 65534)" in r.stderr and "Traceback" not in r.stderr
    assert planted.stat().st_size == 0
    link = tmp_path / "link.pcapng"
    link.symlink_to(planted)
    r = kstap("tap", "--read", str(SAMPLE), "-w", str(link), cwd=tmp_path)
    assert r.returncode == 2 and planted.stat().st_size == 0


# -- the seed stays secret ------------------------------------------------------------------------------

def seed_forms(seed: int) -> list[str]:
    """How a seed (or its derived constant, which is as good as the seed) could appear in text."""
    forms = []
    for value in (seed, seed2(seed)):
        forms += [str(value), f"{value:x}", f"{value:08x}", f"{value:#x}"]
    return forms


def seed_bytes(seed: int) -> list[bytes]:
    return [seed.to_bytes(4, "big"), seed.to_bytes(4, "little"), seed2(seed).to_bytes(4, "big"),
            seed2(seed).to_bytes(4, "little")]


@pytest.mark.parametrize("mode_args", [["--mode", "percentage", "--rate", "50%"], ["--mode", "full"]])
def test_no_output_contains_the_seed(tmp_path: Path, mode_args: list[str]) -> None:
    r = kstap("tap", "--read", str(SAMPLE), "-w", "cap.pcapng", "--entries", "e.ndjson", "--json", "--seed",
              f"{SEED:#x}", *mode_args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    texts = {"stdout (NDJSON events)": r.stdout, "stderr": r.stderr,
             "entries": (tmp_path / "e.ndjson").read_text(),
             "capture": (tmp_path / "cap.pcapng").read_bytes().decode("latin-1")}
    assert seed_id(SEED) in texts["capture"], "the seed id is what identifies the seed in the capture"
    assert json.loads(texts["entries"].splitlines()[0])["flow_id"]
    for where, text in texts.items():
        low = text.lower()
        for form in seed_forms(SEED):
            assert form.lower() not in low, f"the seed appears in {where} as {form}"
    raw = (tmp_path / "cap.pcapng").read_bytes()
    sample = SAMPLE.read_bytes()
    for b in seed_bytes(SEED):
        assert raw.count(b) == sample.count(b), "the seed's bytes appear in the capture"


def test_each_run_draws_its_own_seed(tmp_path: Path) -> None:
    ids = set()
    for i in range(3):
        r = kstap("tap", "--read", str(SAMPLE), "-w", f"r{i}.pcapng", "--mode", "percentage", "--rate", "0.5",
                  cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        text = (tmp_path / f"r{i}.pcapng").read_bytes().decode("latin-1")
        ids.add(text.split("kstap: run ", 1)[1].split("seed=", 1)[1].split()[0])
    assert len(ids) == 3, ids


# -- selection is unpredictable without the seed ---------------------------------------------------------

def structured_keys(n: int) -> list[FlowKey]:
    """What a sender controls cheaply: one client, one server, consecutive source ports, a few protocols,
    plus consecutive client addresses (the most regular inputs a hash can get)."""
    server = ipaddress.ip_address("10.0.0.2").packed
    keys = []
    for i in range(n):
        client = ipaddress.ip_address(0x0A010000 + i // 1000).packed
        port = 20000 + i % 1000
        proto = (6, 17)[i % 2]
        a, b = sorted([(client, port), (server, 443)])
        keys.append(FlowKey(proto, a[0], a[1], b[0], b[1]))
    return keys


KEYS = structured_keys(20000)
RATE = 0.3


def kept(seed: int, keys: list[FlowKey] = KEYS, rate: float = RATE) -> list[bool]:
    t = threshold(rate)
    return [flow_hash(k, seed) < t for k in keys]


def within(observed: float, expected: float, n: int, sigmas: float = 4.5) -> bool:
    """``observed`` is a binomial share over ``n`` trials within ``sigmas`` standard errors of ``expected``."""
    return abs(observed - expected) <= sigmas * (expected * (1 - expected) / n) ** 0.5


def test_each_seed_keeps_the_rate_of_even_the_most_regular_flows() -> None:
    rng = random.Random(7)
    for seed in [0, 1, 0xFFFFFFFF, *(rng.getrandbits(32) for _ in range(4))]:
        k = kept(seed)
        assert within(sum(k) / len(k), RATE, len(k)), (seed, sum(k) / len(k))
        for bit in range(10):  # the kept set does not lean on any bit of the port the sender picks
            ones = [x for key, x in zip(KEYS, k, strict=True) if (max(key.a_port, key.b_port) >> bit) & 1]
            assert within(sum(ones) / len(ones), RATE, len(ones)), (seed, bit)


def test_two_seeds_keep_independent_sets_overlap_is_rate_squared() -> None:
    rng = random.Random(11)
    for _ in range(5):
        a, b = kept(rng.getrandbits(32)), kept(rng.getrandbits(32))
        both = sum(x and y for x, y in zip(a, b, strict=True)) / len(a)
        assert within(both, RATE * RATE, len(a)), both


def test_a_sender_who_learned_one_seed_cannot_pick_flows_under_another() -> None:
    """The sender watched a run (seed A) and knows exactly which of its flows were captured. Under a new
    seed B it sends only the flows A kept (to be seen) or only those A dropped (to hide): the share kept
    is the rate either way, and the correlation between the two verdicts is at chance level."""
    rng = random.Random(23)
    n = len(KEYS)
    for _ in range(5):
        a, b = kept(rng.getrandbits(32)), kept(rng.getrandbits(32))
        chosen = [y for x, y in zip(a, b, strict=True) if x]
        hidden = [y for x, y in zip(a, b, strict=True) if not x]
        assert within(sum(chosen) / len(chosen), RATE, len(chosen))
        assert within(sum(hidden) / len(hidden), RATE, len(hidden))
        ma, mb = sum(a) / n, sum(b) / n
        cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True)) / n
        corr = cov / ((ma * (1 - ma)) ** 0.5 * (mb * (1 - mb)) ** 0.5)
        assert abs(corr) < 4.5 / n**0.5, corr  # |r| under 4.5 standard errors of a null correlation


def test_neighbouring_seeds_are_as_unrelated_as_random_ones() -> None:
    """A seed one bit away from the real one is no better a guess than any other."""
    base = 0x12345678
    a = kept(base)
    for bit in (0, 7, 16, 31):
        b = kept(base ^ (1 << bit))
        both = sum(x and y for x, y in zip(a, b, strict=True)) / len(a)
        assert within(both, RATE * RATE, len(a)), (bit, both)
