"""Kubernetes RBAC in the small: PolicyRules → an authorizer for the fake API server.

The semantics are those of the API server's RBAC authorizer (``pkg/apis/rbac/v1/evaluation_helpers.go``):
a request is allowed if some rule of some binding matches it, where a rule matches when

- ``verbs`` holds the verb or ``*``;
- ``apiGroups`` holds the resource's group or ``*``;
- ``resources`` holds ``resource``, ``resource/subresource``, ``*``, or ``*/subresource``;
- ``resourceNames`` is empty or holds the object's name (a list, watch or create has none, so a rule
  with names never allows those).

A ClusterRole bound by a ClusterRoleBinding applies everywhere (cluster-scoped resources and every
namespace); a Role (or ClusterRole) bound by a RoleBinding applies only inside its namespace.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fakeapi import RESOURCES

Rule = dict[str, list[str]]
GROUPS = {r.plural: r.group for r in RESOURCES}


def rule_allows(rule: Rule, verb: str, group: str, resource: str, name: str | None) -> bool:
    base, _, sub = resource.partition("/")
    verbs, groups, resources = rule.get("verbs", []), rule.get("apiGroups", []), rule.get("resources", [])
    names = rule.get("resourceNames", [])
    return (("*" in verbs or verb in verbs)
            and ("*" in groups or group in groups)
            and ("*" in resources or resource in resources or (bool(sub) and f"*/{sub}" in resources))
            and (not names or name in names)
            and bool(base))


@dataclass
class Binding:
    rules: list[Rule]
    namespace: str | None = None
    """None: a ClusterRoleBinding; else a RoleBinding in this namespace."""


@dataclass
class Authorizer:
    """The ``authorizer`` of :class:`fakeapi.FakeCluster`; remembers what it refused."""

    bindings: list[Binding]
    denied: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    """(verb, group, resource, namespace) of every refused request."""

    def __call__(self, verb: str, resource: str, namespace: str | None, name: str | None) -> bool:
        group = GROUPS[resource.split("/")[0]]
        for b in self.bindings:
            if b.namespace is not None and b.namespace != namespace:
                continue
            if any(rule_allows(r, verb, group, resource, name) for r in b.rules):
                return True
        self.denied.append((verb, group, resource, namespace))
        return False


def bindings_for(grants: Iterable[tuple[str, str, str, Any]]) -> list[Binding]:
    """(verb, group, resource, namespace-or-None) grants → the fewest bindings that give exactly them."""
    by_scope: dict[str | None, dict[tuple[str, str], list[str]]] = {}
    for verb, group, resource, namespace in grants:
        by_scope.setdefault(namespace, {}).setdefault((group, resource), []).append(verb)
    return [Binding([{"apiGroups": [g], "resources": [r], "verbs": sorted(v)} for (g, r), v in sorted(rules.items())],
                    ns)
            for ns, rules in by_scope.items()]
