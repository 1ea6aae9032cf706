"""The workers on the real cluster: the image built from the Dockerfile, the manifests' security context as
the kernel sees it, `kstap clean` then another run, pod churn during a run."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
from pathlib import Path

from e2e import (
    APP_NS,
    NODES,
    ROOT,
    Apps,
    app_pods,
    ensure_pods,
    http_requests,
    kget,
    kstap_env,
    kubectl,
    pod,
    tap,
    wait_for,
)

NET_RAW = 1 << 13


def worker_pods() -> list[dict[str, object]]:
    return [p for p in kget("pods", "-n", "kstap")["items"] if p["status"].get("phase") == "Running"]


def test_workers_run_the_built_image_non_root_with_only_net_raw(apps: Apps, tmp_path: Path) -> None:
    seen: dict[str, str] = {}

    def inspect() -> None:
        pods = wait_for("worker pods", lambda: len(worker_pods()) == len(NODES) and worker_pods(), 30)
        for p in pods:
            name = p["metadata"]["name"]  # type: ignore[index]
            spec = p["spec"]["containers"][0]  # type: ignore[index]
            assert spec["image"] == "kstap:0.1.0"
            status = kubectl("exec", "-n", "kstap", name, "--", "cat", "/proc/1/status").stdout
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            seen[name] = fields["Uid"]
            assert fields["Uid"].split()[:2] == ["65534", "65534"], fields["Uid"]
            assert int(fields["CapEff"], 16) == NET_RAW, fields["CapEff"]  # NET_RAW and nothing else
            assert int(fields["CapBnd"], 16) == NET_RAW
            assert fields["NoNewPrivs"].strip() == "1"
            assert fields["Seccomp"].strip() == "2"  # RuntimeDefault: a filter
            ro = kubectl("exec", "-n", "kstap", name, "--", "sh", "-c", "touch /x", check=False)
            assert ro.returncode != 0 and "Read-only file system" in ro.stderr
            cid = p["status"]["containerStatuses"][0]["imageID"]  # type: ignore[index]
            assert cid, p

    run = tap(["-n", APP_NS], during=inspect, duration=12, tmp=tmp_path, settle=0.5)
    assert run.code == 0, run.err
    assert len(seen) == len(NODES)


def test_clean_then_another_run(apps: Apps, tmp_path: Path) -> None:
    """`kstap clean` right after a run (its namespace still terminating), then a run again: it waits, deploys."""
    first = tap(["-n", APP_NS, "--keep-workers"], duration=5, tmp=tmp_path / "a")
    assert first.code == 0, first.err
    assert kget("daemonsets", "-n", "kstap")["items"], "--keep-workers left them"
    res = subprocess.run([sys.executable, "-m", "kstap", "clean"], capture_output=True, text=True,
                         env=kstap_env(), cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "deleted daemonset kstap/" in res.stdout and "deleted namespace kstap" in res.stdout
    tag = secrets.token_hex(3)
    second = tap(["-n", APP_NS], during=lambda: http_requests("client-1", apps.ip("http-2"), [f"{tag}-again"]),
                 duration=10, tmp=tmp_path / "b")
    assert second.code == 0, second.err
    assert any((e.get("path") or "").endswith(f"{tag}-again") for e in second.entry_list())


def test_pod_churn_during_a_run(apps: Apps, tmp_path: Path) -> None:
    """A target pod deleted, another created (and scheduled) during the run: its traffic is captured."""
    tag = secrets.token_hex(3)
    name = f"late-{tag}"

    def churn() -> None:
        kubectl("delete", "pod", "-n", APP_NS, "http-2", "--wait=false")
        late = ensure_pods(APP_NS, [pod(name, NODES[1], ["python3", "-m", "http.server", "8080"], ports=[8080])])
        ip = late[name]["status"]["podIP"]
        threading.Event().wait(4)  # the watch event, the new filter posted to the node's worker
        http_requests("client-1", ip, [f"{tag}-late"])

    try:
        run = tap(["-n", APP_NS], during=churn, duration=30, tmp=tmp_path)
        assert run.code == 0, run.err
        # the deleted pod's veth went away under the node's worker: it captures on (it used to exit)
        kinds = [e.get("kind") for e in run.events if e.get("event") == "alert"]
        assert "worker-restarted" not in kinds and "worker-lost" not in kinds, run.events
        entries = [e for e in run.entry_list() if (e.get("path") or "").endswith(f"{tag}-late")]
        alerts = [(e.get("kind"), e.get("message")) for e in run.events if e.get("event") == "alert"]
        assert len(entries) == 1 and sorted(entries[0]["nodes"]) == NODES, (entries, run.err, alerts)
    finally:
        kubectl("delete", "pod", "-n", APP_NS, name, "--wait=false", check=False)
        apps.pods.update(ensure_pods(APP_NS, [p for p in app_pods() if p["metadata"]["name"] == "http-2"]))
