#!/usr/bin/env python3
"""A real Kubernetes cluster on this machine, for kstap's end-to-end tests (`make cluster`, `make cluster-down`).

What runs (docs/kubernetes.md, "The test cluster"):

- etcd, kube-apiserver, kube-controller-manager and kube-scheduler in the control plane's network namespace
  ``kstapc-cp``; two nodes ``kstap-n1`` / ``kstap-n2``, each a kubelet with its own containerd, runc and the
  CNI ``bridge`` + ``host-local`` plugins in its namespace ``kstapc-n1`` / ``kstapc-n2``. The three hang off a
  bridge in a fourth namespace ``kstapc-lan`` (172.30.250.0/24); each node routes the other's pod CIDR over it.
- Every process runs in one private mount namespace (the kubelets' and containerds' mounts vanish with it),
  in cgroups under ``/kstap-e2e`` of every v1 hierarchy (so ``down`` finds each process, the containers too),
  and in one of the harness's network namespaces. Nothing is added to the host's network namespace: no
  interface, address, route, iptables or nft rule, no kube-proxy. kubectl and kstap on the host reach the API
  server through a relay listening on 127.0.0.1 that connects from inside ``kstapc-cp``.
- Images come from no registry: a debootstrap Debian base, a Python image on it, the worker image built from
  the project's Dockerfile, a pause image compiled from ``images/pause.c`` and ``localhost/kstap-testapp:dev``;
  each node's containerd imports them under the names kstap uses by default.

``up`` is idempotent (a healthy cluster is left as it is); ``down`` removes every process, namespace, mount,
cgroup, veth and file it made, also after a failed ``up``. Build outputs stay in /var/cache/kstap-e2e.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "cluster"
K8S_VERSION = "v1.34.4"
CACHE = Path(os.environ.get("KSTAP_E2E_CACHE", "/var/cache/kstap-e2e"))
BIN = CACHE / K8S_VERSION / "bin"
VAR = Path("/var/lib/kstap-e2e")
RUN = Path("/run/kstap-e2e")
STATE = RUN / "state.json"
KUBECONFIG = ROOT / ".cluster" / "kubeconfig"
CGROUP = "kstap-e2e"
CGROUP_FS = Path("/sys/fs/cgroup")

LAN = "kstapc-lan"
CP = "kstapc-cp"
CP_IP = "172.30.250.10"
NODES = {  # node name -> (netns, LAN address, pod CIDR, gateway)
    "kstap-n1": ("kstapc-n1", "172.30.250.11", "10.250.1.0/24", "10.250.1.1"),
    "kstap-n2": ("kstapc-n2", "172.30.250.12", "10.250.2.0/24", "10.250.2.1"),
}
SERVICE_CIDR = "10.250.128.0/20"
NETNS = [LAN, CP, *(n[0] for n in NODES.values())]
RELAY_PORT = int(os.environ.get("KSTAP_E2E_PORT", "16443"))

BASE_IMAGE = "localhost/kstap-debian:bookworm"
PYTHON_IMAGE = "localhost/kstap-python:3.11"
TESTAPP_IMAGE = "localhost/kstap-testapp:dev"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
"""kubelet 1.34's default sandbox image; containerd is told the same name."""

KERNEL_SYSCTLS = ["vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops"]
"""What a kubelet sets on the host (protectKernelDefaults: false); ``down`` puts the old values back."""

NODE_IF = "uplink0"
"""A node's end of its veth to the cluster LAN bridge (inside the node namespace)."""


def log(msg: str) -> None:
    print(f"kcluster: {msg}", file=sys.stderr, flush=True)


def sh(*argv: str | Path, check: bool = True, capture: bool = False, **kw: object) -> str:
    res = subprocess.run([str(a) for a in argv], check=False, text=True,
                         stdout=subprocess.PIPE if capture else None,
                         stderr=subprocess.PIPE if capture else None, **kw)  # type: ignore[call-overload]
    if check and res.returncode != 0:
        detail = (res.stderr or "").strip()[-2000:] if capture else ""
        raise SystemExit(f"kcluster: {' '.join(map(str, argv))} failed ({res.returncode}) {detail}")
    return res.stdout or "" if capture else ""


def in_ns(netns: str, *argv: str | Path, check: bool = True, capture: bool = False) -> str:
    return sh("nsenter", f"--net=/run/netns/{netns}", "--", *argv, check=check, capture=capture)


# -- state -----------------------------------------------------------------------------------------
def load_state() -> dict[str, object]:
    try:
        return json.loads(STATE.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def save_state(state: dict[str, object]) -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps(state, indent=1))


# -- cgroups (v1 here; v2 has one hierarchy and the same layout) -------------------------------------
def hierarchies() -> list[Path]:
    if (CGROUP_FS / "cgroup.controllers").exists():
        return [CGROUP_FS]
    return [h for h in sorted(CGROUP_FS.iterdir()) if (h / "cgroup.procs").exists()]


def make_cgroup(rel: str) -> None:
    for h in hierarchies():
        path = h
        for part in f"{CGROUP}/{rel}".strip("/").split("/"):
            parent, path = path, path / part
            if not path.exists():
                path.mkdir()
                for knob in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset: a new group starts empty
                    if (path / knob).exists() and (parent / knob).exists():
                        (path / knob).write_text((parent / knob).read_text())


def join_cgroup(rel: str) -> None:
    pid = str(os.getpid())
    for h in hierarchies():
        (h / CGROUP / rel / "cgroup.procs").write_text(pid)


def cgroup_dirs(top: Path) -> list[Path]:
    """``top`` and every cgroup under it, deepest first. Cgroups vanish while this walks (the kubelet and
    runc remove theirs as their processes die): a directory gone meanwhile is skipped, never an error."""
    found: list[Path] = []
    for root, _dirs, _files in os.walk(top, onerror=lambda _exc: None):
        found.append(Path(root))
    return sorted(found, key=lambda d: len(d.parts), reverse=True)


def cgroup_pids() -> set[int]:
    pids: set[int] = set()
    for h in hierarchies():
        for d in cgroup_dirs(h / CGROUP):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
    return pids


def remove_cgroups() -> None:
    for h in hierarchies():
        top = h / CGROUP
        if not top.exists():
            continue
        for d in cgroup_dirs(top):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


# -- processes ---------------------------------------------------------------------------------------
def spawn(name: str, argv: list[str | Path], netns: str | None, cgroup: str, mntns: str | None) -> int:
    """Start a long-running process of the cluster, detached, in its netns, the mount ns and a cgroup."""
    (VAR / "logs").mkdir(parents=True, exist_ok=True)
    out = open(VAR / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
    make_cgroup(cgroup)

    def child() -> None:
        os.setsid()
        join_cgroup(cgroup)

    ns = ([f"--net=/run/netns/{netns}"] if netns else []) + ([f"--mount={mntns}"] if mntns else [])
    cmd = ["nsenter", *ns, "--", *map(str, argv)] if ns else list(map(str, argv))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, preexec_fn=child, close_fds=True)
    out.close()
    return proc.pid


def kill_all(timeout: float = 10.0) -> None:
    """SIGTERM every process in the cluster's cgroups, by PID, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        pids = cgroup_pids()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and cgroup_pids():
            time.sleep(0.2)


# -- network -------------------------------------------------------------------------------------------
def make_network() -> None:
    for ns in NETNS:
        sh("ip", "netns", "add", ns)
        in_ns(ns, "ip", "link", "set", "lo", "up")
    in_ns(LAN, "ip", "link", "add", "kbr0", "type", "bridge")
    in_ns(LAN, "ip", "link", "set", "kbr0", "up")
    hosts = {CP: CP_IP, **{n[0]: n[1] for n in NODES.values()}}
    for i, (ns, addr) in enumerate(hosts.items()):
        # both ends are created inside LAN (never in the host namespace), then one end moves to ns
        in_ns(LAN, "ip", "link", "add", f"p{i}", "type", "veth", "peer", "name", NODE_IF, "netns", ns)
        in_ns(LAN, "ip", "link", "set", f"p{i}", "master", "kbr0", "up")
        in_ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", NODE_IF)
        in_ns(ns, "ip", "link", "set", NODE_IF, "up")
    for name, (ns, _addr, _cidr, _gw) in NODES.items():
        in_ns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for other, (_ons, oaddr, ocidr, _ogw) in NODES.items():
            if other != name:
                in_ns(ns, "ip", "route", "add", ocidr, "via", oaddr)
    for _ns, addr, cidr, _gw in NODES.values():
        in_ns(CP, "ip", "route", "add", cidr, "via", addr)


def delete_network() -> None:
    have = set(sh("ip", "netns", "list", capture=True, check=False).split())
    for ns in NETNS:
        if ns in have:
            sh("ip", "netns", "delete", ns, check=False)


# -- PKI --------------------------------------------------------------------------------------------------
def pki(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    ossl = ["openssl"]
    sh(*ossl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "ca.key", "-out", d / "ca.crt",
       "-days", "30", "-subj", "/CN=kstap-e2e-ca", capture=True)
    sh(*ossl, "genrsa", "-out", d / "sa.key", "2048", capture=True)
    sh(*ossl, "rsa", "-in", d / "sa.key", "-pubout", "-out", d / "sa.pub", capture=True)
    sans = ["IP:127.0.0.1", f"IP:{CP_IP}", "IP:10.250.128.1", "DNS:localhost", "DNS:kubernetes",
            "DNS:kubernetes.default", "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"]
    certs = {
        "apiserver": ("/CN=kube-apiserver", "serverAuth", sans),
        "apiserver-kubelet-client": ("/O=system:masters/CN=kube-apiserver-kubelet-client", "clientAuth", []),
        "admin": ("/O=system:masters/CN=kstap-e2e-admin", "clientAuth", []),
        "controller-manager": ("/CN=system:kube-controller-manager", "clientAuth", []),
        "scheduler": ("/CN=system:kube-scheduler", "clientAuth", []),
        **{name: (f"/O=system:nodes/CN=system:node:{name}", "clientAuth", []) for name in NODES},
    }
    for name, (subj, usage, alt) in certs.items():
        ext = d / f"{name}.ext"
        lines = ["basicConstraints=CA:FALSE", "keyUsage=digitalSignature,keyEncipherment",
                 f"extendedKeyUsage={usage}"] + ([f"subjectAltName={','.join(alt)}"] if alt else [])
        ext.write_text("\n".join(lines) + "\n")
        sh(*ossl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr",
           "-subj", subj, capture=True)
        sh(*ossl, "x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
           "-CAcreateserial", "-out", d / f"{name}.crt", "-days", "30", "-extfile", ext, capture=True)


def kubeconfig(d: Path, user: str, server: str) -> str:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kstap-e2e",
        "clusters": [{"name": "kstap-e2e", "cluster": {"server": server,
                                                       "certificate-authority-data": b64(d / "ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(d / f"{user}.crt"),
                                          "client-key-data": b64(d / f"{user}.key")}}],
        "contexts": [{"name": "kstap-e2e", "context": {"cluster": "kstap-e2e", "user": user,
                                                        "namespace": "default"}}],
    }, indent=1)


# -- the relay: host 127.0.0.1:PORT -> kube-apiserver inside kstapc-cp ----------------------------------------
def relay_main(port: int, netns: str, target: str) -> None:
    """Listen on the host's loopback, then move into the control plane's namespace: every connection the
    relay then opens is made there. The listening socket stays where it was created."""
    listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns")
    host, tport = target.rsplit(":", 1)

    def pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def serve(conn: socket.socket) -> None:
        try:
            up = socket.create_connection((host, int(tport)), timeout=5)
            up.settimeout(None)
        except OSError:
            conn.close()
            return
        threading.Thread(target=pump, args=(up, conn), daemon=True).start()
        pump(conn, up)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


# -- images ------------------------------------------------------------------------------------------------
def buildah(*args: str | Path, capture: bool = False) -> str:
    return sh("buildah", "--root", CACHE / "buildah" / "storage", "--runroot", RUN / "buildah", *args, capture=capture)


def image_exists(name: str) -> bool:
    return subprocess.run(["buildah", "--root", str(CACHE / "buildah" / "storage"), "--runroot",
                           str(RUN / "buildah"), "inspect", "--type", "image", name],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def bud(tag: str, containerfile: Path, context: Path, *build_args: str) -> None:
    args: list[str | Path] = ["bud", "--layers", "--isolation", "oci", "--runtime", "/usr/bin/runc",
                              "--network", "host", "--ulimit", "nofile=16384:16384", "--ulimit", "nproc=8192:8192",
                              "-f", containerfile, "-t", tag]
    for ba in build_args:
        args += ["--build-arg", ba]
    buildah(*args, context)


def tree_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        files = sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts) if p.is_dir() else [p]
        for f in files:
            if f.suffix in (".so", ".pyc"):
                continue
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def worker_image_name() -> str:
    sys.path.insert(0, str(ROOT))
    from kstap.kube.manifests import DEFAULT_IMAGE

    return DEFAULT_IMAGE if "/" in DEFAULT_IMAGE.split(":")[0] else f"docker.io/library/{DEFAULT_IMAGE}"


def build_images() -> dict[str, Path]:
    """Build (or reuse) every image; returns {image name: docker-archive}."""
    out = CACHE / "images"
    out.mkdir(parents=True, exist_ok=True)
    (RUN / "buildah").mkdir(parents=True, exist_ok=True)
    rootfs = CACHE / "rootfs" / "bookworm"
    if not rootfs.exists():
        t0 = time.monotonic()
        tmp = rootfs.with_name("bookworm.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        sh("nice", "-n", "10", "debootstrap", "--variant=minbase", "bookworm", tmp, "http://deb.debian.org/debian")
        tmp.rename(rootfs)
        log(f"debootstrap: {time.monotonic() - t0:.0f} s")
    if not image_exists(BASE_IMAGE):
        tar = CACHE / "rootfs" / "bookworm.tar"
        sh("tar", "--numeric-owner", "--exclude=./var/cache/apt/archives/*.deb", "--exclude=./var/lib/apt/lists/*",
           "-C", rootfs, "-cf", tar, ".")
        ctr = buildah("from", "scratch", capture=True).strip()
        buildah("add", ctr, tar, "/")
        buildah("config", "--cmd", "/bin/bash", "--label", "org.opencontainers.image.title=kstap-e2e debian base", ctr)
        buildah("commit", "--rm", ctr, BASE_IMAGE)
        tar.unlink()
    if not image_exists(PYTHON_IMAGE):
        ctx = Path(tempfile.mkdtemp(prefix="kstap-python."))
        try:
            (ctx / "local-ca").mkdir()
            for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
                shutil.copy(crt, ctx / "local-ca" / crt.name)
            bud(PYTHON_IMAGE, HERE / "images" / "python.Containerfile", ctx, f"BASE_IMAGE={BASE_IMAGE}")
        finally:
            shutil.rmtree(ctx)
    if not image_exists(TESTAPP_IMAGE):
        bud(TESTAPP_IMAGE, HERE / "images" / "testapp.Containerfile", HERE / "images", f"BASE_IMAGE={BASE_IMAGE}")
    if not image_exists(PAUSE_IMAGE):
        ctx = Path(tempfile.mkdtemp(prefix="kstap-pause."))
        try:
            sh("gcc", "-static", "-O2", "-o", ctx / "pause", HERE / "images" / "pause.c")
            bud(PAUSE_IMAGE, HERE / "images" / "pause.Containerfile", ctx)
        finally:
            shutil.rmtree(ctx)
    worker = worker_image_name()
    key = tree_hash(ROOT / "Dockerfile", ROOT / "pyproject.toml", ROOT / "setup.py", ROOT / "README.md",
                    ROOT / "kstap")
    stamp = out / "worker.key"
    if not image_exists(worker) or not stamp.exists() or stamp.read_text() != key:
        bud(worker, ROOT / "Dockerfile", ROOT, f"BASE_IMAGE={PYTHON_IMAGE}")
        stamp.write_text(key)
        (out / "worker.tar").unlink(missing_ok=True)
    buildah("rm", "--all", capture=True)  # working containers a failed build left (and their mounts)
    archives = {}
    for name, fname in ((PAUSE_IMAGE, "pause"), (TESTAPP_IMAGE, "testapp"), (worker, "worker")):
        tar = out / f"{fname}.tar"
        if not tar.exists():
            buildah("push", "--quiet", name, f"docker-archive:{tar}:{name}")
        archives[name] = tar
    return archives


# -- the go build ----------------------------------------------------------------------------------------------
def build_binaries() -> None:
    want = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"]
    key = tree_hash(HERE / "go" / "go.mod", HERE / "go" / "go.sum")
    stamp = BIN / ".key"
    if stamp.exists() and stamp.read_text() == key and all((BIN / b).exists() for b in want):
        return
    BIN.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    ver = K8S_VERSION
    major, minor = ver[1:].split(".")[:2]
    ld = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        ld += [f"-X {pkg}.gitVersion={ver}", f"-X {pkg}.gitMajor={major}", f"-X {pkg}.gitMinor={minor}",
               f"-X {pkg}.gitTreeState=clean", f"-X {pkg}.buildDate=2026-01-01T00:00:00Z"]
    env = {**os.environ, "GOFLAGS": "-trimpath", "CGO_ENABLED": "0"}
    sh("nice", "-n", "10", "go", "build", "-ldflags", " ".join(ld), "-o", f"{BIN}/",
       *(f"k8s.io/kubernetes/cmd/{b}" for b in want), cwd=HERE / "go", env=env)
    stamp.write_text(key)
    log(f"go build of {', '.join(want)}: {time.monotonic() - t0:.0f} s")


# -- configuration files ---------------------------------------------------------------------------------------
def containerd_config(name: str) -> Path:
    d = VAR / name
    cfg = d / "containerd.toml"
    cni = d / "cni"
    cni.mkdir(parents=True, exist_ok=True)
    _ns, _addr, cidr, gw = NODES[name]
    (cni / "10-kstap-e2e.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "kstap-e2e",
        "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": cidr, "gateway": gw}]],
                              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(d / "ipam")}}],
    }, indent=1))
    cfg.write_text(textwrap.dedent(f"""\
        version = 2
        root = "{d}/containerd"
        state = "{RUN}/{name}/containerd"
        disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                            "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                            "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
        [grpc]
          address = "{RUN}/{name}/containerd.sock"
        [ttrpc]
          address = "{RUN}/{name}/containerd.ttrpc.sock"
        [debug]
          address = ""
        [metrics]
          address = ""
        [plugins."io.containerd.internal.v1.opt"]
          path = "{d}/opt"
        [plugins."io.containerd.grpc.v1.cri"]
          sandbox_image = "{PAUSE_IMAGE}"
          netns_mounts_under_state_dir = true
          disable_apparmor = true
          # this machine's root lacks CAP_SYS_RESOURCE, so runc cannot lower a pod's oom_score_adj below
          # containerd's own ("nsexec: failed to update /proc/self/oom_score_adj: Permission denied");
          # with this, containerd clamps the kubelet's -998 for sandboxes to what it may set
          restrict_oom_score_adj = true
          stream_server_address = "127.0.0.1"
          [plugins."io.containerd.grpc.v1.cri".cni]
            bin_dir = "/usr/lib/cni"
            conf_dir = "{cni}"
          [plugins."io.containerd.grpc.v1.cri".containerd]
            snapshotter = "overlayfs"
            default_runtime_name = "runc"
            [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
              runtime_type = "io.containerd.runc.v2"
              [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
                BinaryName = "/usr/bin/runc"
                SystemdCgroup = false
        """))
    return cfg


def kubelet_config(name: str, pki_dir: Path) -> Path:
    d = VAR / name
    _ns, addr, cidr, _gw = NODES[name]
    cfg = d / "kubelet.yaml"
    (d / "pod-logs").mkdir(parents=True, exist_ok=True)
    cfg.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": addr, "port": 10250, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki_dir / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP}/{name}", "cgroupsPerQOS": True,
        "failCgroupV1": False, "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{RUN}/{name}/containerd.sock",
        "podLogsDir": str(d / "pod-logs"), "resolvConf": "", "podCIDR": cidr,
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "serializeImagePulls": False, "maxPods": 60, "registerNode": True,
        "nodeStatusUpdateFrequency": "4s", "syncFrequency": "10s",
        "shutdownGracePeriod": "0s", "localStorageCapacityIsolation": True,
    }, indent=1))
    return cfg


# -- up / down ---------------------------------------------------------------------------------------------
def kubectl(*args: str, capture: bool = True, check: bool = True) -> str:
    return sh(BIN / "kubectl", f"--kubeconfig={KUBECONFIG}", *args, capture=capture, check=check)


def healthy() -> bool:
    state = load_state()
    pids = state.get("pids", {})
    if not state or not KUBECONFIG.exists() or not isinstance(pids, dict):
        return False
    if any(not Path(f"/proc/{pid}").exists() for pid in pids.values()):
        return False
    res = subprocess.run([str(BIN / "kubectl"), f"--kubeconfig={KUBECONFIG}", "get", "nodes", "-o", "json",
                          "--request-timeout=5s"], capture_output=True, text=True)
    if res.returncode != 0:
        return False
    ready = [n for n in json.loads(res.stdout)["items"]
             if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))]
    return len(ready) >= len(NODES)


def wait(what: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (Exception, SystemExit):  # sh() fails with SystemExit: keep polling until the deadline
            pass
        time.sleep(0.5)
    raise SystemExit(f"kcluster: {what} not ready after {timeout:.0f} s (logs: {VAR}/logs/)")


def import_images(name: str, archives: dict[str, Path], only_missing: bool) -> None:
    sock = f"{RUN}/{name}/containerd.sock"
    have = sh("ctr", "--address", sock, "-n", "k8s.io", "images", "ls", "-q", capture=True).split()
    for image, tar in archives.items():
        if only_missing and image in have:
            continue
        sh("ctr", "--address", sock, "-n", "k8s.io", "images", "import", tar, capture=True)


def up() -> None:
    t0 = time.monotonic()
    build_binaries()
    archives = build_images()
    if healthy():
        state = load_state()
        key = (CACHE / "images" / "worker.key").read_text()
        stale = state.get("worker_key") != key
        for name in NODES:  # the worker image follows the source tree: a rebuilt one is imported again
            import_images(name, archives, only_missing=True)
            if stale:
                import_images(name, {worker_image_name(): archives[worker_image_name()]}, only_missing=False)
        state["worker_key"] = key
        save_state(state)
        log(f"the cluster is up already ({time.monotonic() - t0:.1f} s); KUBECONFIG={KUBECONFIG}")
        return
    down(quiet=True)
    t1 = time.monotonic()
    state: dict[str, object] = {"version": K8S_VERSION, "pids": {}, "started": time.time()}
    pids: dict[str, int] = state["pids"]  # type: ignore[assignment]
    state["sysctls"] = {k: sh("sysctl", "-n", k, capture=True).strip() for k in KERNEL_SYSCTLS}
    save_state(state)
    for d in (VAR, RUN):
        d.mkdir(parents=True, exist_ok=True)
    make_cgroup("system")
    make_network()
    # one private mount namespace for every process: their mounts vanish with it
    holder = spawn("mount-holder", ["unshare", "--mount", "--propagation", "private", "sleep", "infinity"],
                   None, "system", None)
    pids["mount-holder"] = holder
    save_state(state)
    deadline = time.monotonic() + 5
    mnt = f"/proc/{holder}/ns/mnt"
    while os.readlink(f"/proc/{holder}/ns/mnt") == os.readlink("/proc/self/ns/mnt") or \
            Path(f"/proc/{holder}/comm").read_text().strip() != "sleep":
        if time.monotonic() > deadline:
            raise SystemExit("kcluster: the mount namespace holder did not start")
        time.sleep(0.05)
    p = VAR / "pki"
    pki(p)
    KUBECONFIG.parent.mkdir(parents=True, exist_ok=True)
    KUBECONFIG.write_text(kubeconfig(p, "admin", f"https://127.0.0.1:{RELAY_PORT}"))
    KUBECONFIG.chmod(0o600)
    inside = f"https://{CP_IP}:6443"
    # for a CLI inside the control plane's namespace, where the nodes are routable (the direct data path)
    KUBECONFIG.with_name("kubeconfig-cp").write_text(kubeconfig(p, "admin", inside))
    KUBECONFIG.with_name("kubeconfig-cp").chmod(0o600)
    for user in ("controller-manager", "scheduler", *NODES):
        (p / f"{user}.kubeconfig").write_text(kubeconfig(p, user, inside))

    pids["etcd"] = spawn("etcd", ["etcd", "--name", "kstap-e2e", "--data-dir", VAR / "etcd",
                                  "--listen-client-urls", "http://127.0.0.1:2379",
                                  "--advertise-client-urls", "http://127.0.0.1:2379",
                                  "--listen-peer-urls", "http://127.0.0.1:2380",
                                  "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                                  "--initial-cluster", "kstap-e2e=http://127.0.0.1:2380",
                                  "--quota-backend-bytes", str(2 << 30)], CP, "cp", mnt)
    pids["kube-apiserver"] = spawn("kube-apiserver", [
        BIN / "kube-apiserver", "--etcd-servers=http://127.0.0.1:2379",
        f"--advertise-address={CP_IP}", "--bind-address=0.0.0.0", "--secure-port=6443",
        f"--service-cluster-ip-range={SERVICE_CIDR}", "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction", "--allow-privileged=true",
        # reach kubelets by their address: a node name would be looked up in the host's DNS (from inside
        # the control plane's namespace, where it is unreachable anyway)
        "--kubelet-preferred-address-types=InternalIP",
        f"--client-ca-file={p}/ca.crt", f"--tls-cert-file={p}/apiserver.crt",
        f"--tls-private-key-file={p}/apiserver.key",
        f"--kubelet-client-certificate={p}/apiserver-kubelet-client.crt",
        f"--kubelet-client-key={p}/apiserver-kubelet-client.key",
        f"--service-account-key-file={p}/sa.pub", f"--service-account-signing-key-file={p}/sa.key",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--cert-dir={VAR}/apiserver-certs", "--profiling=true", "--v=1"], CP, "cp", mnt)
    pids["relay"] = spawn("relay", [sys.executable, Path(__file__).resolve(), "relay"], None, "system", None)
    save_state(state)
    wait("kube-apiserver", lambda: kubectl("get", "--raw", "/readyz", "--request-timeout=3s").strip() == "ok", 90)
    pids["kube-controller-manager"] = spawn("kube-controller-manager", [
        BIN / "kube-controller-manager", f"--kubeconfig={p}/controller-manager.kubeconfig",
        f"--authentication-kubeconfig={p}/controller-manager.kubeconfig",
        f"--authorization-kubeconfig={p}/controller-manager.kubeconfig",
        f"--service-account-private-key-file={p}/sa.key", f"--root-ca-file={p}/ca.crt",
        f"--cluster-signing-cert-file={p}/ca.crt", f"--cluster-signing-key-file={p}/ca.key",
        "--use-service-account-credentials=true", "--leader-elect=false", "--bind-address=127.0.0.1",
        "--controllers=*,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
        "--allocate-node-cidrs=false", "--v=1"], CP, "cp", mnt)
    pids["kube-scheduler"] = spawn("kube-scheduler", [
        BIN / "kube-scheduler", f"--kubeconfig={p}/scheduler.kubeconfig",
        f"--authentication-kubeconfig={p}/scheduler.kubeconfig",
        f"--authorization-kubeconfig={p}/scheduler.kubeconfig",
        "--leader-elect=false", "--bind-address=127.0.0.1", "--v=1"], CP, "cp", mnt)
    save_state(state)
    for name, (ns, _addr, _cidr, _gw) in NODES.items():
        (RUN / name).mkdir(parents=True, exist_ok=True)
        make_cgroup(name)
        pids[f"{name}-containerd"] = spawn(f"{name}-containerd", ["containerd", "--config", containerd_config(name)],
                                           ns, f"{name}-system", mnt)
    save_state(state)
    for name, (ns, addr, _cidr, _gw) in NODES.items():
        sock = f"{RUN}/{name}/containerd.sock"
        wait(f"containerd of {name}",
             lambda s=sock: sh("ctr", "--address", s, "version", capture=True, check=True) != "", 30)  # type: ignore[misc]
        import_images(name, archives, only_missing=False)
        pids[f"{name}-kubelet"] = spawn(f"{name}-kubelet", [
            BIN / "kubelet", f"--config={kubelet_config(name, p)}", f"--kubeconfig={p}/{name}.kubeconfig",
            f"--hostname-override={name}", f"--node-ip={addr}", f"--root-dir={VAR}/{name}/kubelet",
            f"--cert-dir={VAR}/{name}/kubelet-pki", "--v=1"], ns, f"{name}-system", mnt)
    save_state(state)

    def nodes_ready() -> bool:
        items = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
        return sum(any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
                   for n in items) == len(NODES)

    wait("the nodes", nodes_ready, 120)
    wait("the default service account", lambda: kubectl("get", "serviceaccount", "default", "-n", "default"), 60)
    state["worker_key"] = (CACHE / "images" / "worker.key").read_text()
    state["up_seconds"] = round(time.monotonic() - t1, 1)
    save_state(state)
    log(f"up in {time.monotonic() - t0:.0f} s (cluster start {state['up_seconds']} s); KUBECONFIG={KUBECONFIG}")


def down(quiet: bool = False) -> None:
    state = load_state()
    kill_all()
    remove_cgroups()
    delete_network()
    # mounts live in the private mount namespace and went with its last process; anything left in ours:
    prefixes = (str(VAR) + "/", str(RUN) + "/")
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(prefixes)), key=len, reverse=True):
        sh("umount", "-l", m, check=False)
    for k, v in dict(state.get("sysctls", {})).items():  # type: ignore[call-overload]
        sh("sysctl", "-qw", f"{k}={v}", check=False)
    shutil.rmtree(VAR, ignore_errors=True)
    for child in (RUN.iterdir() if RUN.exists() else []):
        if child.name != "buildah":
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
    KUBECONFIG.unlink(missing_ok=True)
    KUBECONFIG.with_name("kubeconfig-cp").unlink(missing_ok=True)
    if not quiet:
        left = cgroup_pids()
        log("down" + (f" (still running: {sorted(left)})" if left else ""))


def status() -> int:
    if not healthy():
        print("kstap-e2e cluster: not running")
        return 1
    print(kubectl("get", "nodes", "-o", "wide"))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["up", "down", "status", "build", "images", "relay"])
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("kcluster: error: needs root (network namespaces, cgroups, containerd)", file=sys.stderr)
        return 3
    if args.command == "relay":
        relay_main(RELAY_PORT, CP, f"{CP_IP}:6443")
    elif args.command == "up":
        up()
    elif args.command == "down":
        down()
    elif args.command == "status":
        return status()
    elif args.command == "build":
        build_binaries()
    elif args.command == "images":
        build_images()
    return 0


if __name__ == "__main__":
    sys.exit(main())
