"""Run one target of :mod:`targets` under atheris (libFuzzer, coverage-guided).

Every ``fuzz_<target>.py`` is two lines calling :func:`main`. kstap, the targets and the
third-party parsers kstap hands bytes to (dpkt, hpack, PyYAML) are instrumented for coverage; an
exception the target's contract does not allow is a crash, written by libFuzzer to
``-artifact_prefix`` (see ``fuzz/run.py``).
"""

from __future__ import annotations

import sys


def main(name: str) -> None:
    import atheris

    with atheris.instrument_imports(include=["kstap", "targets", "remote_targets", "dpkt", "hpack", "yaml"]):
        import targets

    target = targets.TARGETS[name]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
