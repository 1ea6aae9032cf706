"""``kstap tap -n NS`` end to end on one machine: two "nodes", real workers, the fake API server.

- **Nodes** are the two network namespaces of a :class:`kstap.demo.lab.Lab`, joined by its veth
  pair (``node-a`` is the lab's client side, ``node-b`` its server side). **Pods** are addresses
  on each node's veth end, so pod-to-pod traffic between the nodes crosses the veth: it leaves
  node-a's interface and arrives on node-b's.
- **The cluster** is the fake API server (``tests/kube/fakeapi.py``) with Node and Pod objects
  holding those addresses. Its DaemonSet controller creates a worker pod per node the CLI's
  DaemonSet allows; the :class:`ProcessKubelet` here plays the kubelet: it starts a REAL
  ``kstap worker`` from the container's own command line (adapted only where a process on this
  machine differs from a pod: ``--listen 127.0.0.1:0`` instead of the pod IP and port, ``--netns``
  so it captures inside its node's namespace, the mounted Secret written as 0600 files), waits
  until it serves and its readiness probe (``/healthz``) passes, registers the pod proxy to it and
  only then marks the pod Ready. Deleting the pod stops the process (by PID).
- **The CLI** is the real ``python -m kstap tap -n shop …`` in a subprocess, talking to the fake
  with the real ``kubernetes`` client; it reaches the workers through the fake's pod proxy.

Traffic only flows between addresses inside the lab's namespaces; every process is stopped by PID
and the namespaces deleted, pass or fail.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kstap.demo.lab import Lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "kube"))

from fakeapi import FakeApiServer, FakeCluster, wait_for  # noqa: E402

SEED = "0x5eed"
UDP_PORT = 7000
TCP_PORT = 7001
NODES = ("node-a", "node-b")
SHOP = {"node-a": ["cart-1", "cart-2", "cart-3"], "node-b": ["pay-1", "pay-2", "pay-3"]}
"""The target pods (namespace ``shop``) on each node."""
NOISE = {"node-a": "noise-a", "node-b": "noise-b"}
"""A pod of another namespace on each node: its traffic must not be captured."""


# -- the programs run inside the node namespaces ------------------------------------------------------
SERVE = r"""
import select, socket, sys, threading, time
deadline = time.monotonic() + float(sys.argv[1])
udp = []
for ip in sys.argv[2:]:  # one socket per pod address: an echo must come from the address it went to
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((ip, UDP_PORT))
    udp.append(u)
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", TCP_PORT))
t.listen(128)
t.settimeout(0.2)
def echo(c):
    c.settimeout(3)
    try:
        while True:
            d = c.recv(4096)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    c.close()
def tcp():
    while time.monotonic() < deadline:
        try:
            c, _ = t.accept()
        except OSError:
            continue
        threading.Thread(target=echo, args=(c,), daemon=True).start()
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
while time.monotonic() < deadline:
    for u in select.select(udp, [], [], 0.2)[0]:
        d, peer = u.recvfrom(65535)
        u.sendto(d, peer)
""".replace("UDP_PORT", str(UDP_PORT)).replace("TCP_PORT", str(TCP_PORT))

SEND = r"""
import json, socket, sys, time
flows = json.loads(sys.argv[1])
deadline = time.monotonic() + float(sys.argv[2])
done = 0
for proto, src, sport, dst in flows:
    if time.monotonic() > deadline:
        break
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, sport))
        s.settimeout(1)
        for i in range(2):
            s.sendto(b"kstap-e2e-%d" % i, (dst, UDP_PORT))
            try:
                s.recvfrom(100)
            except OSError:
                pass
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((src, sport))
        s.settimeout(3)
        s.connect((dst, TCP_PORT))
        for i in range(2):
            s.sendall(b"kstap-e2e-tcp-%d" % i)
            s.recv(100)
        s.close()
    s.close()
    done += 1
print(done)
""".replace("UDP_PORT", str(UDP_PORT)).replace("TCP_PORT", str(TCP_PORT))


@dataclass
class Nodes:
    """Two node namespaces (a Lab) and the pod addresses on each."""

    lab: Lab
    ns: dict[str, str] = field(default_factory=dict)
    ips: dict[str, str] = field(default_factory=dict)
    """Pod name → its IP."""
    node_of: dict[str, str] = field(default_factory=dict)
    """Pod name → its node."""

    @classmethod
    def build(cls, lab: Lab) -> Nodes:
        nodes = cls(lab, ns={"node-a": lab.client, "node-b": lab.server})
        dev = {"node-a": lab.client_if, "node-b": lab.server_if}
        base = lab.client_ip.rsplit(".", 1)[0]
        for node, host in (("node-a", 10), ("node-b", 20)):
            for i, pod in enumerate([*SHOP[node], NOISE[node]], start=1):
                ip = f"{base}.{host + i}"
                subprocess.run(["ip", "-n", nodes.ns[node], "addr", "add", f"{ip}/24", "dev", dev[node]],
                               check=True, capture_output=True)
                nodes.ips[pod], nodes.node_of[pod] = ip, node
        return nodes

    def node_ip(self, node: str) -> str:
        return self.lab.client_ip if node == "node-a" else self.lab.server_ip

    def serve(self, lifetime: float = 60.0) -> None:
        procs = [self.lab.spawn(self.ns[n], [sys.executable, "-c", SERVE, str(lifetime),
                                             *(ip for pod, ip in self.ips.items() if self.node_of[pod] == n)],
                                stdout=subprocess.PIPE) for n in NODES]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"

    def send(self, flows: list[tuple[str, str, int, str]], seconds: float = 20.0) -> None:
        """Run the flows (proto, source pod IP, source port, destination IP) from the sources' nodes."""
        by_node: dict[str, list[tuple[str, str, int, str]]] = {}
        for f in flows:
            node = next(n for pod, n in self.node_of.items() if self.ips[pod] == f[1])
            by_node.setdefault(node, []).append(f)
        procs = [subprocess.Popen(["ip", "netns", "exec", self.ns[n], sys.executable, "-c", SEND, json.dumps(fl),
                                   str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for n, fl in by_node.items()]
        for p, fl in zip(procs, by_node.values(), strict=True):
            out, err = p.communicate(timeout=seconds + 10)
            assert p.returncode == 0 and int(out) == len(fl), err.decode(errors="replace")


# -- the kubelet: real worker processes for the fake's DaemonSet pods ------------------------------------
@dataclass
class Started:
    pod: str
    node: str
    proc: subprocess.Popen[str]
    argv: list[str]
    lines: list[str] = field(default_factory=list)
    port: int = 0


class ProcessKubelet:
    """Runs each ``run`` pod of the fake as a real ``kstap worker`` in its node's namespace."""

    def __init__(self, cluster: FakeCluster, netns: dict[str, str], tmp: Path) -> None:
        self.cluster = cluster
        self.netns = netns
        self.tmp = tmp
        self.started: list[Started] = []
        self.errors: list[str] = []
        self.stopped: list[str] = []
        self._lock = threading.Lock()

    # the Kubelet protocol ---------------------------------------------------------------------------
    def start(self, pod: dict[str, Any]) -> None:
        name, ns = pod["metadata"]["name"], pod["metadata"]["namespace"]
        try:
            run = self._launch(pod)
            self._wait_serving(run)
        except Exception as exc:
            self.errors.append(f"{name}: {exc}")
            return
        self.cluster.register_proxy(ns, name, ("127.0.0.1", run.port))
        self.cluster.mark_ready(ns, name)

    def stop(self, pod: dict[str, Any]) -> None:
        """A deleted pod: SIGTERM now (the pod's grace period is the caller's wait, not ours)."""
        name = pod["metadata"]["name"]
        self.stopped.append(name)
        for run in self.started:
            if run.pod == name and run.proc.poll() is None:
                run.proc.send_signal(signal.SIGTERM)

    # -------------------------------------------------------------------------------------------------
    def _launch(self, pod: dict[str, Any]) -> Started:
        spec = pod["spec"]
        node = spec["nodeName"]
        (container,) = spec["containers"]
        mounts = self._mount_secrets(pod)
        env: dict[str, str] = {}
        for var in container.get("env") or []:
            env[var["name"]] = self._env_value(pod, var)
        args = [self._expand(a, env) for a in [*container["command"], *container["args"]]]
        for path, local in mounts.items():
            args = [local + a[len(path):] if a.startswith(path + "/") else a for a in args]
        assert args[:2] == ["kstap", "worker"], args
        listen = args.index("--listen")
        assert args[listen + 1] == f"127.0.0.1:{container['ports'][0]['containerPort']}", args
        args[listen + 1] = "127.0.0.1:0"  # every "node" shares this machine's loopback: any free port
        argv = [sys.executable, "-m", "kstap", *args[1:], "--netns", self.netns[node]]
        proc_env = {**{k: v for k, v in os.environ.items() if not k.startswith("KUBE")}, **env,
                    "HOME": str(self.tmp), "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT, env=proc_env)
        run = Started(pod["metadata"]["name"], node, proc, argv)
        with self._lock:
            self.started.append(run)
        threading.Thread(target=self._pump, args=(run,), daemon=True).start()
        return run

    def _mount_secrets(self, pod: dict[str, Any]) -> dict[str, str]:
        """Each secret volume as a directory of 0600 files (what the kubelet mounts): path → local dir."""
        spec = pod["spec"]
        ns = pod["metadata"]["namespace"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        out = {}
        for m in spec["containers"][0].get("volumeMounts") or []:
            vol = volumes[m["name"]]
            if "secret" not in vol:
                continue
            secret = self.cluster.get("secrets", ns, vol["secret"]["secretName"])
            assert secret is not None, f"the pod mounts a missing secret {vol['secret']['secretName']}"
            local = self.tmp / pod["metadata"]["name"] / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            for key, value in (secret.get("data") or {}).items():
                f = local / key
                f.write_bytes(base64.b64decode(value))
                f.chmod(0o600)
            out[m["mountPath"].rstrip("/")] = str(local)
        return out

    def _env_value(self, pod: dict[str, Any], var: dict[str, Any]) -> str:
        if "value" in var:
            return str(var["value"])
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            path = ref["fieldRef"]["fieldPath"]
            return {"spec.nodeName": pod["spec"]["nodeName"], "status.podIP": "127.0.0.1",
                    "metadata.name": pod["metadata"]["name"]}[path]
        if "secretKeyRef" in ref:
            sk = ref["secretKeyRef"]
            secret = self.cluster.get("secrets", pod["metadata"]["namespace"], sk["name"])
            assert secret is not None
            return base64.b64decode(secret["data"][sk["key"]]).decode()
        raise AssertionError(f"unsupported env source {ref}")

    @staticmethod
    def _expand(arg: str, env: dict[str, str]) -> str:
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)

    @staticmethod
    def _pump(run: Started) -> None:
        assert run.proc.stderr is not None
        for line in run.proc.stderr:
            run.lines.append(line.rstrip("\n"))

    @staticmethod
    def _wait_serving(run: Started, timeout: float = 20.0) -> None:
        """Until the log says where it serves and the readiness probe (/healthz) answers 200."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and run.proc.poll() is None:
            m = next((re.search(r"serving http://127\.0\.0\.1:(\d+) ", ln) for ln in list(run.lines)
                      if "serving http://" in ln), None)
            if m is not None:
                run.port = int(m.group(1))
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{run.port}/healthz", timeout=2) as r:
                        if r.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"worker for {run.node} not Ready (exit {run.proc.poll()}): {run.lines[-5:]}")

    def alive(self) -> list[Started]:
        return [r for r in self.started if r.proc.poll() is None]

    def close(self) -> None:
        for run in self.started:
            if run.proc.poll() is None:
                run.proc.send_signal(signal.SIGTERM)
        for run in self.started:
            try:
                run.proc.wait(10)
            except subprocess.TimeoutExpired:
                run.proc.kill()
                run.proc.wait(5)


# -- the CLI -----------------------------------------------------------------------------------------------
class Cli:
    """``python -m kstap ARGS`` with ``--json``: events are read as they come."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env.update(HOME=str(tmp), PYTHONPATH=str(ROOT))
        self.argv = [sys.executable, "-m", "kstap", *args]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        self.events: list[dict[str, Any]] = []
        self.err: list[str] = []
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line.rstrip("\n"))

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["event"] == event]

    def wait_for(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        assert wait_for(lambda: pred() or self.proc.poll() is not None, timeout=timeout, interval=0.05), \
            f"timed out waiting for {what}; alerts: {[(a['kind'], a['message']) for a in self.of('alert')][-8:]}; " \
            f"stderr: {self.err[-10:]}"
        assert pred(), f"the CLI exited ({self.proc.returncode}) before {what}; stderr: {self.err[-10:]}"

    def wait_capturing(self, nodes: tuple[str, ...] = NODES, timeout: float = 40.0) -> None:
        """Until a stats event shows every node's worker up (their filters were posted before 'start')."""
        def up() -> bool:
            return any({w["node"] for w in e["workers"] if w["alive"]} >= set(nodes) for e in self.of("stats"))
        self.wait_for(up, timeout, f"workers on {nodes}")

    def settle(self, timeout: float = 20.0) -> None:
        """Until the merged capture stops growing: two stats reports in a row, both after this call,
        with the same packet count (the last packets passed the workers' watermark and the merge)."""
        start = len(self.of("stats"))

        def quiet() -> bool:
            fresh = self.of("stats")[start:]
            return len(fresh) >= 2 and fresh[-1]["captured"] == fresh[-2]["captured"]

        self.wait_for(quiet, timeout, "the capture to settle")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"the CLI did not stop on SIGINT; stderr: {self.err[-10:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# -- fixtures ------------------------------------------------------------------------------------------------
@dataclass
class Env:
    nodes: Nodes
    api: FakeApiServer
    kubelet: ProcessKubelet
    kubeconfig: Path
    tmp: Path
    clis: list[Cli] = field(default_factory=list)

    @property
    def cluster(self) -> FakeCluster:
        return self.api.cluster

    def tap(self, *args: str) -> Cli:
        cli = Cli(["tap", "-n", "shop", "--kubeconfig", str(self.kubeconfig), "--ready-timeout", "30", *args],
                  self.tmp)
        self.clis.append(cli)
        return cli


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    lab = Lab()
    kubelet: ProcessKubelet | None = None
    api: FakeApiServer | None = None
    e: Env | None = None
    try:
        lab.__enter__()
        nodes = Nodes.build(lab)
        cluster = FakeCluster(default_behaviour="run")
        kubelet = ProcessKubelet(cluster, nodes.ns, tmp_path)
        cluster.kubelet = kubelet
        for node in NODES:
            cluster.add_node(node, nodes.node_ip(node))
        for ns in ("shop", "other"):
            cluster.add_namespace(ns)
        for node in NODES:
            for pod in SHOP[node]:
                cluster.add_pod("shop", pod, node, nodes.ips[pod])
            cluster.add_pod("other", NOISE[node], node, nodes.ips[NOISE[node]])
        api = FakeApiServer(cluster).start()
        e = Env(nodes, api, kubelet, api.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path)
        yield e
    finally:
        for cli in e.clis if e else []:
            cli.kill()
        if kubelet is not None:
            kubelet.close()
        if e is not None:
            e.api.stop()  # the one running now (a test may have restarted it)
        elif api is not None:
            api.stop()
        lab.close()


# -- traffic and what the file says ---------------------------------------------------------------------------
Flow = tuple[str, str, int, str]


def cross_node_flows(nodes: Nodes, base: int) -> list[Flow]:
    """UDP and TCP flows from every target pod to every target pod on the other node, both ways."""
    flows: list[Flow] = []
    for src_node, dst_node in (("node-a", "node-b"), ("node-b", "node-a")):
        for i, src in enumerate(SHOP[src_node]):
            for j, dst in enumerate(SHOP[dst_node]):
                port = base + 100 * i + 10 * j
                flows += [("udp", nodes.ips[src], port + k, nodes.ips[dst]) for k in range(4)]
                flows.append(("tcp", nodes.ips[src], port + 5, nodes.ips[dst]))
    return flows


def noise_flows(nodes: Nodes, base: int) -> list[Flow]:
    a, b = nodes.ips[NOISE["node-a"]], nodes.ips[NOISE["node-b"]]
    return [("udp", a, base + k, b) for k in range(8)] + [("tcp", b, base + 50 + k, a) for k in range(2)]


def flow_key(proto: str, a: str, ap: int, b: str, bp: int) -> tuple[str, tuple[str, int], tuple[str, int]]:
    x, y = sorted([(a, ap), (b, bp)])
    return proto, x, y


def key_of(f: Flow) -> tuple[str, tuple[str, int], tuple[str, int]]:
    proto, src, sport, dst = f
    return flow_key(proto, src, sport, dst, UDP_PORT if proto == "udp" else TCP_PORT)


@dataclass
class Capture:
    rows: list[tuple[str, float, tuple[str, tuple[str, int], tuple[str, int]]]]
    """(interface name, epoch seconds, flow key) of every IP packet, in file order."""

    def per_interface(self) -> dict[str, Counter[tuple[str, tuple[str, int], tuple[str, int]]]]:
        out: dict[str, Counter[tuple[str, tuple[str, int], tuple[str, int]]]] = {}
        for iface, _, key in self.rows:
            out.setdefault(iface, Counter())[key] += 1
        return out


def read_capture(wireshark: Any, path: Path) -> Capture:
    wireshark.read_ok(path)
    rows = []
    for iface, t, src, dst, us, ud, ts, td in wireshark.fields(
            path, "frame.interface_name", "frame.time_epoch", "ip.src", "ip.dst", "udp.srcport", "udp.dstport",
            "tcp.srcport", "tcp.dstport"):
        if not src:
            continue
        proto, sp, dp = ("udp", us, ud) if us else ("tcp", ts, td)
        rows.append((iface, float(t), flow_key(proto, src, int(sp), dst, int(dp))))
    return Capture(rows)


# -- the tests ------------------------------------------------------------------------------------------------
def test_two_nodes_one_merged_file_one_seed_keeps_cross_node_flows_on_both_or_neither(env: Env, wireshark) -> None:
    out = env.tmp / "shop.pcapng"
    nodes = env.nodes
    nodes.serve()
    started = time.monotonic()
    cli = env.tap("--mode", "percentage", "--rate", "0.5", "--seed", SEED, "-w", str(out), "--json",
                  "--duration", "45")
    cli.wait_capturing()
    ready_s = time.monotonic() - started
    flows = cross_node_flows(nodes, 20000)
    nodes.send(flows + noise_flows(nodes, 30000))
    cli.settle()  # the last packets pass the workers' watermark (250 ms) and the merge
    assert cli.stop() == 0, cli.err
    total_s = time.monotonic() - started

    # the workers ran from the DaemonSet the CLI created, one per node, and the CLI's clean stopped them
    assert sorted(r.node for r in env.kubelet.started) == list(NODES), env.kubelet.errors
    assert not env.kubelet.errors
    assert wait_for(lambda: not env.kubelet.alive(), timeout=15), \
        ([(r.pod, r.proc.pid, r.lines[-3:]) for r in env.kubelet.alive()], env.kubelet.stopped, cli.err)
    assert not env.cluster.objects("daemonsets") and not env.cluster.objects("secrets", "kstap")
    for run in env.kubelet.started:
        argv = run.argv
        assert argv[argv.index("--mode") + 1] == "percentage" and argv[argv.index("--rate") + 1] == "0.5"
        # the seed reached the workers through the run's Secret (a mounted file), not the pod spec
        assert "--seed" not in argv and str(int(SEED, 16)) not in argv
        assert Path(argv[argv.index("--seed-file") + 1]).read_text() == str(int(SEED, 16))

    # one merged file: tshark reads it, one IDB per node, time-ordered
    cap = read_capture(wireshark, out)
    info = wireshark.capinfos(out)
    assert "Number of interfaces in file: 2" in info, info
    per = cap.per_interface()
    names = {"node-a/any", "node-b/any"}  # -i any: one interface per node (its interfaces' copies folded)
    assert set(per) == names, set(per)
    times = [t for _, t, _ in cap.rows]
    assert times == sorted(times), "the merged file is in time order"

    # one seed: every cross-node flow is kept on both nodes or on neither, packet for packet
    keys = {key_of(f) for f in flows}
    at_a, at_b = per["node-a/any"], per["node-b/any"]
    kept = {k for k in keys if k in at_a or k in at_b}
    split = [k for k in kept if (k in at_a) != (k in at_b)]
    assert not split, f"{len(split)} flows kept on one node only: {split[:5]}"
    assert all(at_a[k] == at_b[k] for k in kept), [(k, at_a[k], at_b[k]) for k in kept if at_a[k] != at_b[k]][:5]
    share = len(kept) / len(keys)
    assert 0.3 <= share <= 0.7, f"kept {len(kept)} of {len(keys)} flows at rate 0.5"
    kept_udp = sum(1 for k in kept if k[0] == "udp")
    assert kept_udp and kept_udp < len(kept), "both UDP and TCP flows among the kept ones"
    assert all(at_a[k] == 4 for k in kept if k[0] == "udp"), \
        ("whole flows: two datagrams and two echoes", [(k, at_a[k]) for k in kept if k[0] == "udp" and at_a[k] != 4])

    # nothing but the targets' traffic
    noise = {nodes.ips[p] for p in NOISE.values()}
    assert not [r for r in cap.rows if r[2][1][0] in noise or r[2][2][0] in noise], "non-target pods captured"
    assert set(at_a) | set(at_b) <= keys

    # --json: both workers (nodes) in the progress, the summary matches the file
    stats = cli.of("stats")
    assert {w["node"] for w in stats[-1]["workers"]} == set(NODES)
    assert all(w["alive"] for w in stats[-1]["workers"])
    start = cli.of("start")[0]
    assert sorted(i["name"] for i in start["interfaces"]) == sorted(names)
    (summary,) = cli.of("summary")
    assert summary["exit_code"] == 0 and summary["captured"] == len(cap.rows)
    assert set(summary["per_interface"]) == names
    print(f"\nkube e2e: workers Ready and capturing after {ready_s:.1f} s, run {total_s:.1f} s; "
          f"kept {len(kept)}/{len(keys)} cross-node flows ({share:.0%}), {len(cap.rows)} packets")


def _pty_screen(fd: int, proc: subprocess.Popen[bytes], until: Callable[[str], bool], timeout: float) -> str:
    """Read the terminal's output until ``until(text)`` (ANSI sequences removed) or the timeout."""
    raw = b""
    end = time.monotonic() + timeout
    text = ""
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                raw += os.read(fd, 65536)
            except OSError:
                break
            text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r", "", raw.decode(errors="replace"))
            if until(text):
                break
        elif proc.poll() is not None:
            break
    return text


def test_the_dashboard_shows_both_nodes_workers(env: Env) -> None:
    """The real CLI with its live dashboard on a pseudo-terminal: a row per node in the workers panel."""
    env.nodes.serve()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 120, 0, 0))
    envv = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES") and not k.startswith("KUBE")}
    envv.update(HOME=str(env.tmp), PYTHONPATH=str(ROOT), TERM="xterm-256color")
    proc = subprocess.Popen([sys.executable, "-m", "kstap", "tap", "-n", "shop", "--kubeconfig", str(env.kubeconfig),
                             "--ready-timeout", "30", "-w", str(env.tmp / "dash.pcapng"), "--duration", "40"],
                            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=envv)
    os.close(slave)
    try:
        def both_rows(text: str) -> bool:
            panel = text.rsplit("workers", 1)[-1]
            return "2 up" in panel and "node-a" in panel and "node-b" in panel

        screen = _pty_screen(master, proc, lambda t: both_rows(t) or False, timeout=40)
        if both_rows(screen):
            env.nodes.send(cross_node_flows(env.nodes, 40000)[:10])
        proc.send_signal(signal.SIGINT)
        rest = _pty_screen(master, proc, lambda t: False, timeout=3)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    assert both_rows(screen), screen[-3000:]
    panel = screen.rsplit("workers", 1)[-1]
    assert re.search(r"│\s+0\s+node-a\s+up\s", panel) and re.search(r"│\s+1\s+node-b\s+up\s", panel), panel
    assert code == 0, rest[-2000:]


def test_a_node_that_gains_targets_gets_a_worker_during_the_run(env: Env, wireshark) -> None:
    """Churn brings the first target pod to node-b: the DaemonSet grows, the new worker is attached."""
    nodes, cluster = env.nodes, env.cluster
    for pod in SHOP["node-b"]:
        cluster.delete_pod("shop", pod)  # at the start only node-a hosts targets
    nodes.serve()
    out = env.tmp / "retarget.pcapng"
    cli = env.tap("-w", str(out), "--json", "--duration", "45")
    cli.wait_capturing(("node-a",))
    assert [r.node for r in env.kubelet.started] == ["node-a"]

    def with_pay1(base: int) -> list[Flow]:
        return [f for f in cross_node_flows(nodes, base) if nodes.ips["pay-1"] in (f[1], f[3])]

    before, after = with_pay1(21000), with_pay1(23000)
    nodes.send(before)  # node-b has no worker yet: only node-a sees these
    t0 = time.monotonic()
    cluster.add_pod("shop", "pay-1", "node-b", nodes.ips["pay-1"])
    cli.wait_for(lambda: any(a["kind"] == "worker-added" for a in cli.of("alert")), 30, "the node-b worker")
    attach_s = time.monotonic() - t0
    nodes.send(after)
    cli.settle()
    assert cli.stop() == 0, cli.err

    assert [r.node for r in env.kubelet.started] == ["node-a", "node-b"], env.kubelet.errors
    cap = read_capture(wireshark, out)
    per = cap.per_interface()
    a_name, b_name = "node-a/any", "node-b/any"
    assert set(per) == {a_name, b_name}
    assert "Number of interfaces in file: 2" in wireshark.capinfos(out)
    at_a, at_b = per[a_name], per[b_name]
    assert {key_of(f) for f in before} <= set(at_a) and not {key_of(f) for f in before} & set(at_b)
    for f in after:
        assert at_a[key_of(f)] == at_b[key_of(f)] > 0, f"{f} after node-b's worker was added"
    times = [t for _, t, _ in cap.rows]
    assert times == sorted(times)
    assert {w["node"] for w in cli.of("stats")[-1]["workers"] if w["alive"]} == set(NODES)
    print(f"\nretarget: node-b's worker attached {attach_s:.1f} s after its first target pod appeared")


def test_a_deleted_worker_pod_is_recreated_and_the_capture_goes_on(env: Env, wireshark) -> None:
    """``kubectl delete pod`` on node-b's worker mid-run: the DaemonSet re-creates it (a new process,
    a new pod name), the CLI reads from the new pod, and what was captured before stays in the file."""
    nodes, cluster = env.nodes, env.cluster
    nodes.serve()
    out = env.tmp / "replaced.pcapng"
    cli = env.tap("-w", str(out), "--json", "--duration", "45")
    cli.wait_capturing()
    first, second = cross_node_flows(nodes, 24000)[:20], cross_node_flows(nodes, 26000)[:20]
    nodes.send(first)
    old = next(r for r in env.kubelet.started if r.node == "node-b")
    t0 = time.monotonic()
    cluster.delete_pod("kstap", old.pod)
    cli.wait_for(lambda: any(a["kind"] == "worker-replaced" for a in cli.of("alert")), 30, "the new node-b pod")
    cli.wait_for(lambda: any(a["kind"] == "worker-restarted" for a in cli.of("alert")), 15, "its stream")
    new = env.kubelet.started[-1]
    # the restarted worker starts with a match-nothing filter; the CLI sends its node's filter again
    cli.wait_for(lambda: any("control: filter" in ln and "(applied)" in ln for ln in new.lines), 10,
                 "the node-b filter on the new worker")
    back_s = time.monotonic() - t0
    assert old.proc.wait(15) == 0, old.lines[-5:]  # stopped by its pod's deletion, cleanly
    nodes.send(second)
    cli.settle()
    assert cli.stop() == 0, cli.err

    runs = [r for r in env.kubelet.started if r.node == "node-b"]
    assert len(runs) == 2 and runs[0].pod != runs[1].pod, "a new process for a new pod"
    cap = read_capture(wireshark, out)
    per = cap.per_interface()
    a_name, b_name = "node-a/any", "node-b/any"
    assert set(per) == {a_name, b_name}, "the new pod's interface is the same IDB"
    assert "Number of interfaces in file: 2" in wireshark.capinfos(out)
    for f in first + second:
        k = key_of(f)
        assert per[a_name][k] == per[b_name][k] > 0, f"{f}: before and after the replacement, on both nodes"
    alerts = [a["kind"] for a in cli.of("alert")]
    assert "worker-replaced" in alerts and "worker-restarted" in alerts
    assert {w["node"]: w["restarts"] for w in cli.of("stats")[-1]["workers"]} == {"node-a": 0, "node-b": 1}
    print(f"\nreplaced pod: node-b read again {back_s:.1f} s after its worker pod was deleted")


def test_the_api_server_going_away_and_coming_back(env: Env, wireshark) -> None:
    """The API server stops (every connection, the proxied streams too) for a few seconds and comes
    back on the same port with the same state: the workers keep capturing, the CLI reconnects and
    collects what they captured meanwhile from their backlog, and exits 0 with every packet."""
    nodes = env.nodes
    nodes.serve()
    out = env.tmp / "outage.pcapng"
    cli = env.tap("-w", str(out), "--json", "--duration", "50")
    cli.wait_capturing()
    before, during, after = (cross_node_flows(nodes, base)[:20] for base in (27000, 29000, 31000))
    nodes.send(before)
    port = env.api.httpd.server_port
    env.api.stop()
    t0 = time.monotonic()
    nodes.send(during)  # captured by the workers, held in their backlog
    # Both, not the first: the two streams broke some ms apart, and a server back before the second's
    # grace ran out would let that worker reconnect without ever being lost (no "reattached" for it).
    def lost() -> set[str]:  # "worker N on NODE stopped answering …"
        return {a["message"].split(" stopped")[0] for a in cli.of("alert") if a["kind"] == "worker-lost"}
    cli.wait_for(lambda: len(lost()) >= 2, 15, "both workers lost")
    env.api = FakeApiServer(env.cluster, port=port).start()
    outage_s = time.monotonic() - t0
    cli.wait_for(lambda: sum(a["kind"] == "worker-reattached" for a in cli.of("alert")) >= 2, 30,
                 "both workers back")
    back_s = time.monotonic() - t0
    nodes.send(after)
    cli.settle()
    assert cli.stop() == 0, cli.err
    assert not env.cluster.objects("daemonsets"), "clean ran against the restarted server"

    cap = read_capture(wireshark, out)
    per = cap.per_interface()
    a_name, b_name = "node-a/any", "node-b/any"
    for f in before + during + after:
        k = key_of(f)
        assert per[a_name][k] == per[b_name][k] > 0, f"{f}: captured on both nodes across the outage"
    (summary,) = cli.of("summary")
    assert summary["exit_code"] == 0 and summary["captured"] == len(cap.rows)
    times = [t for _, t, _ in cap.rows]
    late = sum(1 for i in range(1, len(times)) if times[i] < times[i - 1])
    print(f"\noutage: API server away {outage_s:.1f} s, both streams back {back_s:.1f} s after it went; "
          f"{len(cap.rows)} packets, {late} written out of order (released before a lagging worker returned)")
