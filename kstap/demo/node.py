"""A throw-away Kubernetes-node-shaped network: one "node" namespace, one namespace per "pod".

Two layouts, the two that CNIs use for pods on one node:

- ``bridge`` (the CNI bridge plugin, flannel, kubenet): the pods' host-side veths are ports of
  one bridge; pod-to-pod frames are switched, so a packet crosses the sender's veth and the
  receiver's veth.
- ``routed`` (Calico, Cilium's legacy host routing): no bridge; each pod has a /32 address, a
  default route via 169.254.1.1 answered by proxy ARP on its host-side veth, and the node has one
  host route per pod; pod-to-pod packets are routed (their TTL drops by one).

Pods can be added and deleted while something captures in the node namespace. Names carry the
creating PID; everything is deleted by name when the lab closes, whatever happens.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from dataclasses import dataclass, field
from types import TracebackType

from kstap.demo.lab import _ip
from kstap.errors import EnvironmentProblem

_SEQ = itertools.count()
LAYOUTS = ("bridge", "routed")

POD_IF = "pod0"
"""The pod end of each pod's veth, inside the pod namespace (a name of our own, apart from
the host's interfaces)."""


@dataclass
class Pod:
    index: int
    ns: str
    host_if: str
    ip: str


@dataclass
class NodeLab:
    layout: str = "bridge"
    subnet: int = 0
    """Third octet of the pods' 10.214.X.0/24 (bridge) or 10.215.X.0/24 (routed) addresses."""
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}n{next(_SEQ)}")
    node: str = ""
    bridge: str = ""
    """The bridge (bridge layout) or the dummy uplink (routed layout) in the node namespace."""
    pods: dict[int, Pod] = field(default_factory=dict)
    _namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}")
        self.subnet = self.subnet or (os.getpid() + next(_SEQ)) % 200 + 20
        self.node = self.node or f"kstap-{self.tag}-node"
        self.bridge = f"kbr{self.tag}"[-14:]

    def __enter__(self) -> NodeLab:
        if os.geteuid() != 0:
            raise EnvironmentProblem("the node lab creates network namespaces, which needs root",
                                     hint="run it as root (sudo)")
        try:
            _ip("netns", "add", self.node)
            self._namespaces.append(self.node)
            _ip("-n", self.node, "link", "set", "lo", "up")
            if self.layout == "bridge":
                _ip("-n", self.node, "link", "add", self.bridge, "type", "bridge")
                _ip("-n", self.node, "link", "set", self.bridge, "up")
            else:
                # proxy ARP answers for 169.254.1.1 only when the node has a route elsewhere for
                # it: an uplink veth (its peer stays in the node) with the node's address plays the node's real uplink
                self.sysctl(self.node, "net.ipv4.ip_forward", "1")
                _ip("-n", self.node, "link", "add", self.bridge, "type", "veth", "peer", "name", self.bridge + "u")
                _ip("-n", self.node, "addr", "add", f"10.215.{self.subnet}.1/32", "dev", self.bridge)
                _ip("-n", self.node, "link", "set", self.bridge + "u", "up")
                _ip("-n", self.node, "link", "set", self.bridge, "up")
                _ip("-n", self.node, "route", "add", "default", "dev", self.bridge)
        except BaseException:
            self.close()
            raise
        return self

    def sysctl(self, ns: str, key: str, value: str) -> None:
        subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "sysctl", "-qw", f"{key}={value}"],
                       check=True, capture_output=True)

    def pod_ip(self, index: int) -> str:
        return f"10.{214 if self.layout == 'bridge' else 215}.{self.subnet}.{10 + index}"

    def add_pod(self, index: int) -> Pod:
        """A pod namespace with ``POD_IF`` and its host-side veth in the node, wired per layout."""
        ns = f"kstap-{self.tag}-p{index}"
        host_if = f"kv{self.tag}p{index}"[-15:]
        ip = self.pod_ip(index)
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", self.node, "link", "add", host_if, "type", "veth", "peer", "name", POD_IF, "netns", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", POD_IF, "up")
        if self.layout == "bridge":
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", POD_IF)
            _ip("-n", self.node, "link", "set", host_if, "master", self.bridge)
            _ip("-n", self.node, "link", "set", host_if, "up")
        else:
            _ip("-n", ns, "addr", "add", f"{ip}/32", "dev", POD_IF)
            _ip("-n", ns, "route", "add", "169.254.1.1", "dev", POD_IF, "scope", "link")
            _ip("-n", ns, "route", "add", "default", "via", "169.254.1.1", "dev", POD_IF)
            self.sysctl(self.node, f"net.ipv4.conf.{host_if}.proxy_arp", "1")
            self.sysctl(self.node, f"net.ipv4.neigh.{host_if}.proxy_delay", "0")
            _ip("-n", self.node, "link", "set", host_if, "up")
            _ip("-n", self.node, "route", "add", f"{ip}/32", "dev", host_if)
        pod = Pod(index, ns, host_if, ip)
        self.pods[index] = pod
        return pod

    def delete_pod(self, index: int) -> None:
        """Delete the pod's namespace: its veth pair goes with it, as when the kubelet removes a pod."""
        pod = self.pods.pop(index)
        subprocess.run(["ip", "netns", "del", pod.ns], capture_output=True)
        self._namespaces.remove(pod.ns)

    def close(self) -> None:
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._namespaces.clear()
        self.pods.clear()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
