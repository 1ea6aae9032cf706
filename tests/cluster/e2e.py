"""Helpers for tests/cluster/: the real cluster of `make cluster` (cluster/kcluster.py) — kubectl, target pods,
traffic, kstap runs.

Only `make e2e` collects this directory (tests/conftest.py). Every test talks to the real kube-apiserver
through .cluster/kubeconfig, exactly as a user would with KUBECONFIG set. Traffic is sent only between the
cluster's own pods (addresses on the harness's bridges inside its network namespaces), bounded in count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "cluster"))
import kcluster  # noqa: E402

KUBECONFIG = os.environ.get("KUBECONFIG") or str(kcluster.KUBECONFIG)
KUBECTL = str(kcluster.BIN / "kubectl")
NODES = sorted(kcluster.NODES)
APP_NS = "kstap-e2e-shop"
OTHER_NS = "kstap-e2e-other"
TESTAPP = kcluster.TESTAPP_IMAGE

def kubectl(*args: str, check: bool = True, timeout: float = 120, stdin: str | None = None,
            kubeconfig: str = KUBECONFIG) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([KUBECTL, f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True,
                         timeout=timeout, input=stdin)
    if check and res.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def kget(*args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def apply(objects: list[dict[str, Any]]) -> None:
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (AssertionError, subprocess.SubprocessError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"{what}: not after {timeout} s (last: {last!r})")


# -- target pods ------------------------------------------------------------------------------------------
def pod(name: str, node: str, command: list[str], ns: str = APP_NS, labels: dict[str, str] | None = None,
        ports: list[int] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name.rsplit("-", 1)[0], **(labels or {})}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 1,
                     "enableServiceLinks": False, "automountServiceAccountToken": False,
                     "containers": [{"name": "app", "image": TESTAPP, "imagePullPolicy": "Never",
                                     "command": command,
                                     "ports": [{"containerPort": p} for p in ports or []]}]}}


HTTP = ["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"]
H2C = ["nghttpd", "--no-tls", "-d", "/usr/share/doc", "8081"]
DNS = ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--port=53", "--user=root",
       "--address=/kstap.test/192.0.2.53", "--log-facility=-"]
IDLE = ["python3", "-c", "import signal; signal.pause()"]


def app_pods(ns: str = APP_NS) -> list[dict[str, Any]]:
    """On each node: an HTTP/1 server, an h2c server, a DNS server and a client."""
    out = []
    for i, node in enumerate(NODES, 1):
        out += [pod(f"http-{i}", node, HTTP, ns, ports=[8080]), pod(f"h2c-{i}", node, H2C, ns, ports=[8081]),
                pod(f"dns-{i}", node, DNS, ns, ports=[53]), pod(f"client-{i}", node, IDLE, ns)]
    return out


def running_pods(ns: str) -> dict[str, dict[str, Any]]:
    items = kget("pods", "-n", ns)["items"]
    return {p["metadata"]["name"]: p for p in items
            if p["status"].get("phase") == "Running" and p["status"].get("podIP")
            and all(c.get("ready") for c in p["status"].get("containerStatuses", []))
            and not p["metadata"].get("deletionTimestamp")}


def ensure_namespace(ns: str, labels: dict[str, str] | None = None) -> None:
    apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels or {}}}])


def ensure_pods(ns: str, pods: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    ensure_namespace(ns)
    apply(pods)
    names = {p["metadata"]["name"] for p in pods}
    return wait_for(f"pods of {ns} running", lambda: (r := running_pods(ns)) and names <= set(r) and r, 120)


@dataclass
class Apps:
    pods: dict[str, dict[str, Any]]

    def ip(self, name: str) -> str:
        return str(self.pods[name]["status"]["podIP"])

    def node(self, name: str) -> str:
        return str(self.pods[name]["spec"]["nodeName"])


def exec_in(name: str, script: str, ns: str = APP_NS, timeout: float = 120) -> str:
    return kubectl("exec", "-n", ns, name, "--", "sh", "-c", script, timeout=timeout).stdout


def http_requests(client: str, ip: str, paths: list[str], ns: str = APP_NS) -> None:
    """Real HTTP/1.1 requests with curl (one connection per request), from one pod to another."""
    urls = " ".join(f"http://{ip}:8080/{p}" for p in paths)
    exec_in(client, f"for u in {urls}; do curl -s -o /dev/null -m 5 \"$u\"; done", ns)


# -- kstap runs ---------------------------------------------------------------------------------------------
@dataclass
class TapRun:
    code: int
    out: str
    err: str
    pcap: Path
    entries: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def entry_list(self) -> list[dict[str, Any]]:
        if not self.entries.exists():
            return []
        return [json.loads(line) for line in self.entries.read_text().splitlines() if line.strip()]


def kstap_env(kubeconfig: str = KUBECONFIG) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KSTAP_")}
    env.update({"KUBECONFIG": kubeconfig, "PYTHONPATH": str(ROOT), "COLUMNS": "120"})
    return env


def tap(args: list[str], during: Callable[[], None] | None = None, duration: float = 20,
        tmp: Path | None = None, kubeconfig: str = KUBECONFIG, settle: float = 2.0,
        timeout: float = 240) -> TapRun:
    """``kstap tap ARGS -w F --entries E --json --duration D`` as a subprocess, ``during`` run once the capture
    has started (the workers are Ready and every node's filter is applied)."""
    tmp = tmp or Path(tempfile.mkdtemp(prefix="kstap-e2e."))
    tmp.mkdir(parents=True, exist_ok=True)
    pcap, entries = tmp / "f.pcapng", tmp / "e.ndjson"
    cmd = [sys.executable, "-m", "kstap", "tap", *args, "-w", str(pcap), "--entries", str(entries), "--json",
           "--duration", str(duration)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kstap_env(kubeconfig),
                            cwd=tmp)
    events: list[dict[str, Any]] = []
    assert proc.stdout is not None
    try:
        started = False
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            events.append(ev)
            if ev.get("event") == "start" and not started:
                started = True
                time.sleep(settle)
                if during is not None:
                    during()
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:  # the test failed mid-run: stop kstap as a user would, so it cleans up
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    return TapRun(proc.returncode, "", err, pcap, entries, events, time.monotonic() - t0)


def tshark(*args: str) -> str:
    res = subprocess.run(["tshark", *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def interface_names(pcap: Path) -> list[str]:
    """The IDB names of a pcapng, in order (capinfos -T -M prints them)."""
    res = subprocess.run(["capinfos", "-M", "-I", str(pcap)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    names = [line.split("=", 1)[1].strip() for line in res.stdout.splitlines()
             if line.strip().startswith("Name =")]
    return names
