"""Fixtures of tests/cluster/ (helpers: e2e.py). Only `make e2e` collects this directory (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e import APP_NS, KUBECONFIG, OTHER_NS, Apps, app_pods, ensure_namespace, ensure_pods, kubectl


@pytest.fixture(scope="session")
def cluster() -> Iterator[None]:
    res = kubectl("version", "-o", "json", check=False, timeout=15)
    if res.returncode != 0:
        pytest.fail(f"no cluster at {KUBECONFIG}: run `make cluster` first\n{res.stderr}")
    yield


@pytest.fixture(scope="session")
def apps(cluster: None) -> Apps:
    """The target pods: on each node an HTTP/1 server, an h2c server, a DNS server and a client."""
    ensure_namespace(OTHER_NS)
    return Apps(ensure_pods(APP_NS, app_pods()))
