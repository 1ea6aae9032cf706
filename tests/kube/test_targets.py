"""Target resolution against the fake API server with the real client: -n, -A, -e, regex, by node."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kstap.errors import UsageError
from kstap.filters.bpf import BPF_MAXINSNS, compile_filter
from kstap.kube.nodefilter import MATCH_NOTHING, aggregate, node_filter
from kstap.kube.targets import TargetSelection, resolve


def names(targets) -> list[str]:
    return [f"{p.namespace}/{p.name}" for p in targets.pods]


def by_node(targets) -> dict[str, list[str]]:
    return {node: [f"{p.namespace}/{p.name}" for p in pods] for node, pods in targets.by_node.items()}


def test_repeatable_namespaces(kube) -> None:
    t = resolve(kube, TargetSelection(namespaces=["a", "b"]))
    assert names(t) == ["a/db-0", "a/web-1", "a/web-2", "b/api-1", "b/api-2"]
    assert by_node(t) == {"node-a": ["a/web-1", "b/api-1"], "node-b": ["a/db-0", "a/web-2"],
                          "node-c": ["b/api-2"]}
    assert t.node_ips() == {"node-a": ["10.244.1.10", "10.244.1.20"], "node-b": ["10.244.2.10", "10.244.2.11"],
                            "node-c": ["10.244.3.20", "fd00:3::20"]}
    assert t.skipped == [("a/pending-1", "phase Pending")]
    assert set(t.resource_versions) == {"a", "b"} and all(t.resource_versions.values())
    assert t.node_ready == {"node-a": True, "node-b": True, "node-c": True}


def test_all_namespaces(kube) -> None:
    t = resolve(kube, TargetSelection(all_namespaces=True))
    assert names(t) == ["a/db-0", "a/web-1", "a/web-2", "b/api-1", "b/api-2", "c/web-9", "default/hello-1",
                        "kube-system/coredns-1"]
    assert set(t.resource_versions) == {"*"}
    skipped = dict(t.skipped)
    assert skipped["a/pending-1"] == "phase Pending"
    assert skipped["kube-system/proxy-1"].startswith("hostNetwork")  # its IP is the node's: not a pod filter
    assert t.node_ips()["node-a"] == ["10.244.1.2", "10.244.1.10", "10.244.1.20"]


def test_exclude_namespaces(kube) -> None:
    t = resolve(kube, TargetSelection(all_namespaces=True, exclude=["kube-system", "a"]))
    assert names(t) == ["b/api-1", "b/api-2", "c/web-9", "default/hello-1"]
    assert t.skipped == []
    assert by_node(t) == {"node-a": ["b/api-1"], "node-c": ["b/api-2", "c/web-9", "default/hello-1"]}


def test_pod_regex(kube) -> None:
    t = resolve(kube, TargetSelection(all_namespaces=True, pod_regex=r"^web-"))
    assert names(t) == ["a/web-1", "a/web-2", "c/web-9"]
    assert t.node_ips() == {"node-a": ["10.244.1.10"], "node-b": ["10.244.2.10"], "node-c": ["10.244.3.30"]}
    t = resolve(kube, TargetSelection(namespaces=["a"], pod_regex="pending|db"))
    assert names(t) == ["a/db-0"] and t.skipped == [("a/pending-1", "phase Pending")]


def test_default_namespace_is_the_contexts(kube, settings) -> None:
    t = resolve(kube, TargetSelection())
    assert names(t) == ["default/hello-1"]
    from kstap.kube.client import KubeSettings, connect

    other = connect(KubeSettings(kubeconfig=settings.kubeconfig, context="other"))
    assert other.namespace == "b"
    assert names(resolve(other, TargetSelection())) == ["b/api-1", "b/api-2"]


def test_a_node_not_ready_is_noted(cluster, kube) -> None:
    node = cluster.get("nodes", None, "node-b")
    node["status"]["conditions"][0]["status"] = "False"
    from fakeapi import BY_PATH

    cluster.put(BY_PATH[("", "v1", "nodes")], node, create=False)
    t = resolve(kube, TargetSelection(namespaces=["a"]))
    assert t.node_ready["node-b"] is False
    assert "node node-b is not Ready: its worker may not start" in t.notes


@pytest.mark.parametrize("selection, message", [
    (TargetSelection(namespaces=["a"], all_namespaces=True), "-n and -A cannot be used together"),
    (TargetSelection(namespaces=["a"], exclude=["b"]), "-e/--exclude-namespace only applies with -A"),
    (TargetSelection(all_namespaces=True, pod_regex="web-("), "bad pod regex 'web-('"),
    (TargetSelection(namespaces=["a/b"]), "bad namespace name 'a/b'"),
])
def test_conflicts_are_usage_errors(selection, message) -> None:
    with pytest.raises(UsageError) as err:
        selection.validate()
    assert err.value.message.startswith(message) and err.value.hint


def test_unknown_namespace_is_a_usage_error(kube) -> None:
    with pytest.raises(UsageError) as err:
        resolve(kube, TargetSelection(namespaces=["a", "nope"]))
    assert err.value.message.startswith("namespace 'nope' not found")


def test_namespace_check_skipped_when_forbidden(cluster, kube) -> None:
    cluster.forbid("get", "namespaces")
    t = resolve(kube, TargetSelection(namespaces=["a"]))
    assert names(t) == ["a/db-0", "a/web-1", "a/web-2"]
    assert t.notes == ["cannot check that namespace 'a' exists (RBAC forbids 'get namespaces')"]


def test_nodes_forbidden_is_a_note_not_an_error(cluster, kube) -> None:
    cluster.forbid("list", "nodes")
    t = resolve(kube, TargetSelection(namespaces=["b"]))
    assert names(t) == ["b/api-1", "b/api-2"] and t.node_ready == {}
    assert "cannot list nodes (RBAC): node readiness not checked" in t.notes


# -- per-node filters --------------------------------------------------------------------------------
def test_node_filters_hold_only_the_nodes_ips(kube) -> None:
    t = resolve(kube, TargetSelection(namespaces=["a", "b"]))
    filters = t.filters("tcp port 80")
    assert filters["node-a"].expression == "(tcp port 80) and (ip host 10.244.1.10 or ip host 10.244.1.20)"
    assert filters["node-c"].expression == "(tcp port 80) and (ip host 10.244.3.20 or ip6 host fd00:3::20)"
    for nf in filters.values():
        assert nf.strategy == "hosts" and nf.kernel_exact and nf.note is None
        assert nf.instructions == len(compile_filter(nf.expression).insns)


def test_node_filter_without_user_expression() -> None:
    nf = node_filter("", ["10.0.0.2", "10.0.0.1", "10.0.0.1"])
    assert nf.expression == "ip host 10.0.0.1 or ip host 10.0.0.2" and nf.ips == ("10.0.0.1", "10.0.0.2")


def test_node_without_targets_captures_nothing() -> None:
    nf = node_filter("tcp", [])
    assert nf.strategy == "none" and nf.expression == MATCH_NOTHING and nf.kernel_exact


def test_bad_user_expression_is_the_users_error() -> None:
    with pytest.raises(UsageError, match="invalid BPF filter 'tcp port'"):
        node_filter("tcp port", ["10.0.0.1"])


def covered(ip: str, networks: tuple[str, ...]) -> bool:
    nets = _as_set(networks)
    return any(ipaddress.ip_network(f"{ip}/{plen}", strict=False) in nets for plen in {n.prefixlen for n in nets})


_SETS: dict[tuple[str, ...], set] = {}


def _as_set(networks: tuple[str, ...]) -> set:
    if networks not in _SETS:
        _SETS[networks] = {ipaddress.ip_network(n) for n in networks}
    return _SETS[networks]


def test_past_the_limit_aggregates_into_cidrs() -> None:
    ips = [f"10.{i // 250}.{i % 250}.{7 + (i % 3)}" for i in range(3000)]  # 3000 hosts ≈ 11,000 instructions
    nf = node_filter("tcp", ips)
    assert nf.strategy == "cidrs" and nf.instructions <= BPF_MAXINSNS
    assert nf.note and "aggregated into" in nf.note and "CIDR blocks" in nf.note
    assert all(covered(ip, nf.networks) for ip in ips)
    program = compile_filter(nf.expression)
    assert len(program.insns) == nf.instructions


def test_user_space_when_not_even_cidrs_fit() -> None:
    ips = [f"10.{i}.0.1" for i in range(0, 200, 10)] + [f"fd00:{i:x}::1" for i in range(20)]
    nf = node_filter("tcp", ips, limit=12)  # the user's filter alone takes ~8: no room for any block
    assert nf.strategy == "user-space" and nf.expression == "tcp" and not nf.kernel_exact
    assert nf.note and "filtered in user space" in nf.note
    assert len(nf.ips) == 40


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, (1 << 20) - 1), min_size=1, max_size=80), st.integers(1, 40))
def test_aggregate_covers_every_address_within_the_count(offsets: set[int], k: int) -> None:
    base = int(ipaddress.ip_address("10.0.0.0"))
    addrs = sorted(ipaddress.ip_address(base + o) for o in offsets)
    nets = aggregate(addrs, k)
    assert len(nets) <= max(k, 1)
    assert all(any(a in n for n in nets) for a in addrs)
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])


def test_aggregate_keeps_families_apart() -> None:
    addrs = [ipaddress.ip_address(x) for x in ("10.0.0.1", "10.0.0.9", "fd00::1", "fd00::9")]
    nets = aggregate(addrs, 1)
    assert sorted(n.version for n in nets) == [4, 6]
