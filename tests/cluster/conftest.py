"""Fixtures of tests/cluster/ (helpers: e2e.py). Only `make e2e` collects this directory (tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from e2e import APP_NS, KUBECONFIG, OTHER_NS, ROOT, Apps, app_pods, ensure_namespace, ensure_pods, kstap_env, kubectl


@pytest.fixture(scope="session")
def cluster() -> Iterator[None]:
    res = kubectl("version", "-o", "json", check=False, timeout=15)
    if res.returncode != 0:
        pytest.fail(f"no cluster at {KUBECONFIG}: run `make cluster` first\n{res.stderr}")
    # workers a killed run left behind hold the worker port on their nodes: start from nothing of kstap's
    clean = subprocess.run([sys.executable, "-m", "kstap", "clean"], capture_output=True, text=True, env=kstap_env(),
                           cwd=ROOT, timeout=180)
    assert clean.returncode == 0, clean.stderr
    yield


@pytest.fixture(scope="session")
def apps(cluster: None) -> Apps:
    """The target pods: on each node an HTTP/1 server, an h2c server, a DNS server and a client."""
    ensure_namespace(OTHER_NS)
    return Apps(ensure_pods(APP_NS, app_pods()))
