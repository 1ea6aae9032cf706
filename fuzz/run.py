"""``make fuzz``: run every atheris target for a fixed time and report executions and crashes.

    .venv/bin/python fuzz/run.py --seconds 60 [--targets http1,dns] [--workdir .fuzz] [--jobs 1]

Per target: the seeds of :mod:`seeds` are written to ``WORKDIR/corpus/TARGET`` (the corpus grows
there between runs), libFuzzer runs for ``--seconds`` (``-max_total_time``) and writes any crashing
input to ``WORKDIR/crashes/TARGET/``. The table printed at the end (Markdown) gives the time, the
executions, the coverage reached and the crashes; exit status 1 if any target crashed. A crash
input is replayed with ``python fuzz/fuzz_TARGET.py CRASH_FILE``; once fixed, it belongs in
``tests/unit/fuzz/test_fuzz_regressions.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TARGETS = ("flowkey", "savefile", "http1", "http2", "dns", "stage", "settings", "worker_api", "worker_stream")


@dataclass
class Outcome:
    target: str
    seconds: float
    execs: int
    coverage: int
    features: int
    corpus: int
    crashes: list[str]
    returncode: int

    @property
    def rate(self) -> float:
        return self.execs / self.seconds if self.seconds else 0.0


def write_seeds(target: str, corpus: Path) -> int:
    from seeds import SEEDS

    corpus.mkdir(parents=True, exist_ok=True)
    n = 0
    for data in SEEDS[target]():
        (corpus / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)
        n += 1
    return n


def run_target(target: str, seconds: int, workdir: Path) -> Outcome:
    corpus = workdir / "corpus" / target
    crashes = workdir / "crashes" / target
    crashes.mkdir(parents=True, exist_ok=True)
    write_seeds(target, corpus)
    before = set(crashes.iterdir())
    cmd = [sys.executable, str(HERE / f"fuzz_{target}.py"), f"-max_total_time={seconds}", "-print_final_stats=1",
           f"-artifact_prefix={crashes}/", "-timeout=20", "-rss_limit_mb=4096", "-max_len=65536", str(corpus)]
    start = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 600, check=False)
    took = time.monotonic() - start
    log = r.stderr
    (workdir / f"{target}.log").write_text(log)
    execs = _last_int(r"stat::number_of_executed_units:\s*(\d+)", log) or _last_int(r"Done (\d+) runs", log) \
        or _last_int(r"^#(\d+)\s", log)
    cov = _last_int(r"cov: (\d+)", log)
    ft = _last_int(r"ft: (\d+)", log)
    corp = _last_int(r"corp: (\d+)", log)
    new = sorted(str(p) for p in set(crashes.iterdir()) - before)
    return Outcome(target, round(took, 1), execs, cov, ft, corp, new, r.returncode)


def _last_int(pattern: str, text: str) -> int:
    found = re.findall(pattern, text, re.M)
    return int(found[-1]) if found else 0


def table(outcomes: list[Outcome]) -> str:
    rows = ["| target | seconds | executions | exec/s | coverage (edges) | features | corpus | crashes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for o in outcomes:
        rows.append(f"| {o.target} | {o.seconds:.0f} | {o.execs:,} | {o.rate:,.0f} | {o.coverage} | {o.features} | "
                    f"{o.corpus} | {len(o.crashes)} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--workdir", default=str(HERE.parent / ".fuzz"))
    args = ap.parse_args()
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("fuzz: atheris is not installed (pip install atheris; it is in the dev extra)", file=sys.stderr)
        return 3
    workdir = Path(args.workdir)
    outcomes = []
    for target in args.targets.split(","):
        print(f"fuzz: {target} for {args.seconds} s ...", file=sys.stderr, flush=True)
        o = run_target(target, args.seconds, workdir)
        outcomes.append(o)
        print(f"fuzz: {target}: {o.execs:,} executions, {len(o.crashes)} crash(es)"
              + "".join(f"\n  crash: {c}" for c in o.crashes), file=sys.stderr, flush=True)
    print(table(outcomes))
    return 1 if any(o.crashes for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
