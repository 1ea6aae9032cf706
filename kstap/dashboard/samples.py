"""Realistic snapshots for tests, golden frames and benchmarks (a test factory shipped in the package).

Every function is deterministic: same arguments, same snapshot.
"""

from __future__ import annotations

from kstap.model import Alert, ControllerState, ResourceStats, StatsSnapshot, WorkerStats
from kstap.vocabulary import AlertLevel

MIB = 1 << 20
GIB = 1 << 30


def _falling(seconds: int, start: float, end: float, after: int) -> list[tuple[float, float]]:
    """1 Hz rate points: ``start`` until ``after`` s, then halving towards ``end``."""
    points = []
    rate = start
    for t in range(seconds + 1):
        if t > after:
            rate = max(end, rate * 0.85)
        points.append((float(t), round(rate, 4)))
    return points


def steady_full(elapsed: float = 65.0) -> StatsSnapshot:
    """Full mode on one interface, no pressure, no drops."""
    n = int(elapsed)
    return StatsSnapshot(
        elapsed=elapsed, mode="full", profile=None, filter="tcp port 80 or udp port 53", targets=["veth0"],
        output="capture.pcapng", captured=812_345, bytes_captured=523 * MIB, received=812_345, dropped=0,
        packets_per_second=12_498.0, flows_tracked=1_204,
        workers=[WorkerStats(worker=0, captured=812_345, received=812_345, rate=1.0,
                             rate_history=[(float(t), 1.0) for t in range(n + 1)])],
        controller=None,
        resources=ResourceStats(memory_bytes=310 * MIB, memory_limit=1 * GIB, cpu_cores=0.35, cpu_limit=2.0,
                                source="cgroup v2 /kstap"),
        rate_history=[(float(t), 1.0) for t in range(n + 1)],
        memory_history=[(float(t), 0.25 + 0.05 * (t % 7) / 7) for t in range(n + 1)],
    )


def auto_falling(elapsed: float = 90.0) -> StatsSnapshot:
    """Auto mode whose controller cuts the rate as memory climbs past the setpoint."""
    n = int(elapsed)
    history = _falling(n, 1.0, 0.12, after=30)
    rate = history[-1][1]
    return StatsSnapshot(
        elapsed=elapsed, mode="auto", profile="prod", filter="", targets=["default/api-7f9c", "default/web-5d2a"],
        output="tap.pcapng", captured=2_104_882, bytes_captured=1_732 * MIB, received=2_110_020, dropped=5_138,
        sampled_out=3_977_410, rate=rate, packets_per_second=9_870.0, flows_tracked=8_212,
        dissect_memory=96 * MIB,
        workers=[WorkerStats(worker=0, node="node-a", captured=2_104_882, received=2_110_020, dropped=5_138,
                             rate=rate, rate_history=history)],
        controller=ControllerState(pressure=0.74, setpoint=0.70, error=0.04, p_term=-0.012, i_term=-0.081,
                                   d_term=0.0, rate=rate, reason="pi"),
        resources=ResourceStats(memory_bytes=740 * MIB, memory_limit=1 * GIB, cpu_cores=0.82, cpu_limit=1.0,
                                throttled_periods=37, psi_memory_some=1.25, psi_memory_full=0.0,
                                source="cgroup v2 /kubepods/pod1"),
        alerts=[Alert(time=41.0, level=AlertLevel.WARN, kind="memory", message="memory at 71% of the 1.0 GiB limit")],
        rate_history=history,
        memory_history=[(float(t), min(0.74, 0.30 + t * 0.012)) for t in range(n + 1)],
    )


def memory_level(fraction: float, *, oom: int = 0) -> StatsSnapshot:
    """Auto mode with memory at ``fraction`` of a 2 GiB limit (warn at 0.7, critical at 0.9)."""
    s = auto_falling(60.0)
    limit = 2 * GIB
    assert s.resources is not None
    s.resources.memory_limit = limit
    s.resources.memory_bytes = int(limit * fraction)
    s.resources.oom_events = oom
    s.memory_history = [(float(t), min(fraction, 0.4 + t * 0.02)) for t in range(61)]
    s.alerts = [Alert(time=16.0, level=AlertLevel.WARN, kind="memory", message="memory at 70% of the 2.0 GiB limit")]
    if fraction >= 0.9:
        assert s.controller is not None
        s.controller.reason = "emergency"
        s.controller.pressure = fraction
        s.alerts = [*s.alerts,
                    Alert(time=55.0, level=AlertLevel.CRITICAL, kind="memory",
                          message=f"memory at {fraction:.0%} of the limit: emergency halving"),
                    Alert(time=55.2, level=AlertLevel.CRITICAL, kind="shed",
                          message="shed 412 flows (highest hash first)")]
    return s


def several_workers(count: int = 4, elapsed: float = 45.0) -> StatsSnapshot:
    """Remote capture: one worker per node, each with its own rate curve."""
    n = int(elapsed)
    workers = []
    for i in range(count):
        history = _falling(n, 1.0, 0.25 + 0.15 * i, after=10 + 8 * i)
        workers.append(WorkerStats(worker=i, node=f"node-{chr(97 + i)}", captured=250_000 - 31_000 * i,
                                   received=251_000 - 31_000 * i, dropped=100 * i, rate=history[-1][1],
                                   rate_history=history))
    overall = _falling(n, 1.0, 0.3, after=10)
    return StatsSnapshot(
        elapsed=elapsed, mode="auto", profile="staging", filter="tcp", targets=["shop/*"], output="shop.pcapng",
        captured=sum(w.captured for w in workers), bytes_captured=700 * MIB,
        received=sum(w.received for w in workers), dropped=sum(w.dropped for w in workers),
        sampled_out=1_400_000, rate=overall[-1][1], packets_per_second=20_400.0, flows_tracked=15_000,
        dissect_memory=210 * MIB, workers=workers,
        controller=ControllerState(pressure=0.69, setpoint=0.70, error=-0.01, rate=overall[-1][1], reason="deadband"),
        resources=ResourceStats(memory_bytes=1_400 * MIB, memory_limit=2 * GIB, cpu_cores=1.2, cpu_limit=2.0,
                                source="cgroup v2"),
        top_endpoints=[("GET /api/v1/cart", 18_231), ("POST /api/v1/checkout", 4_410), ("GET /healthz", 3_907),
                       ("grpc shop.Inventory/Reserve", 2_202), ("DNS A cart.shop.svc", 1_880)],
        rate_history=overall,
    )


def lost_worker() -> StatsSnapshot:
    """Three workers, one of them lost (its node went away), one restarted once."""
    s = several_workers(3, elapsed=45.0)
    s.workers[1].alive = False
    s.workers[2].restarts = 1
    s.alerts = [Alert(time=30.5, level=AlertLevel.INFO, kind="worker-restarted",
                      message="worker 2 on node-c restarted"),
                Alert(time=38.0, level=AlertLevel.CRITICAL, kind="worker-lost",
                      message="worker 1 on node-b stopped answering; its packets are missing from 38 s on")]
    return s


ALL = {
    "steady_full": steady_full,
    "auto_falling": auto_falling,
    "memory_warn": lambda: memory_level(0.78),
    "memory_critical": lambda: memory_level(0.93, oom=1),
    "several_workers": several_workers,
    "lost_worker": lost_worker,
}
"""Name → snapshot factory: the golden frames (tests/golden/dashboard/NAME.txt)."""
