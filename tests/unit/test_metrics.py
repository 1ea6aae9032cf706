"""The Prometheus endpoint: scraped over HTTP on 127.0.0.1, parsed with prometheus_client's parser."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kstap.contracts import AlertLevel, AlertRaised
from kstap.dashboard import samples
from kstap.metrics import MetricsServer, MonotonicCounter
from kstap.model import CaptureSummary, ResourceStats, StatsSnapshot

COUNTERS = ("kstap_packets_received", "kstap_packets_dropped", "kstap_packets_sampled_out",
            "kstap_bytes_captured", "kstap_packets_captured")
GAUGES = ("kstap_sampling_rate", "kstap_pressure", "kstap_memory_working_set_bytes", "kstap_memory_limit_bytes",
          "kstap_cpu_cores", "kstap_flows_tracked", "kstap_dissect_memory_bytes")


def scrape(server: MetricsServer) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {labels: value}} from one HTTP scrape."""
    with urllib.request.urlopen(server.url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no help text"
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _snap(scale: int) -> StatsSnapshot:
    s = samples.auto_falling()
    s.received, s.dropped, s.sampled_out = 1000 * scale, 10 * scale, 500 * scale
    s.captured, s.bytes_captured = 990 * scale, 100_000 * scale
    return s


def test_two_scrapes_show_counters_increasing() -> None:
    with MetricsServer(0) as server:
        assert server.host == "127.0.0.1" and server.port > 0
        server.progress(_snap(1))
        server.event(AlertRaised(AlertLevel.WARN, "memory", "memory at 71%"))
        first = scrape(server)
        server.progress(_snap(3))
        server.event(AlertRaised(AlertLevel.WARN, "memory", "memory at 75%"))
        server.event(AlertRaised(AlertLevel.CRITICAL, "shed", "shed"))
        server.warning("interface down")
        second = scrape(server)
    for name in COUNTERS:
        a, b = first[name + "_total"][()], second[name + "_total"][()]
        assert 0 < a < b, name
    assert second["kstap_packets_received_total"][()] == 3000
    assert first["kstap_alerts_total"] == {(("kind", "memory"), ("level", "warn")): 1.0}
    assert second["kstap_alerts_total"] == {(("kind", "memory"), ("level", "warn")): 2.0,
                                            (("kind", "shed"), ("level", "critical")): 1.0,
                                            (("kind", "warning"), ("level", "warn")): 1.0}
    for name in GAUGES:
        assert () in second[name], name
    assert second["kstap_sampling_rate"][()] == pytest.approx(0.12)
    assert second["kstap_memory_limit_bytes"][()] == 1 << 30
    assert second["kstap_pressure"][()] == pytest.approx(0.74)
    assert second["kstap_workers"] == {(("state", "lost"),): 0.0, (("state", "up"),): 1.0}


def test_counters_survive_a_reset_of_their_source() -> None:
    with MetricsServer(0) as server:
        server.update(_snap(5))
        server.update(_snap(2))  # a restarted worker counts from zero again
        after = scrape(server)
        server.summary(CaptureSummary(received=1, dropped=0))  # lower than before: ignored, not a reset
        final = scrape(server)
    assert after["kstap_packets_received_total"][()] == 5000 + 2000
    assert final["kstap_packets_received_total"][()] == 7000


def test_before_the_first_snapshot_and_without_resources() -> None:
    with MetricsServer(0) as server:
        empty = scrape(server)
        assert empty["kstap_packets_received_total"][()] == 0 and "kstap_sampling_rate" not in empty
        server.update(StatsSnapshot(received=5))
        bare = scrape(server)
    assert bare["kstap_sampling_rate"][()] == 1.0
    assert "kstap_memory_limit_bytes" not in bare and "kstap_pressure" not in bare
    assert bare["kstap_build_info"]


def test_pressure_without_a_controller_is_the_larger_share() -> None:
    s = StatsSnapshot(resources=ResourceStats(memory_bytes=300, memory_limit=1000, cpu_cores=1.5, cpu_limit=2.0))
    with MetricsServer(0) as server:
        server.update(s)
        assert scrape(server)["kstap_pressure"][()] == pytest.approx(0.75)


def test_monotonic_counter() -> None:
    c = MonotonicCounter()
    assert [c.feed(v) for v in (5, 7, 7, 2, 4)] == [5, 7, 7, 9, 11]


def test_bad_port_and_close_twice() -> None:
    with pytest.raises(ValueError):
        MetricsServer(-1)
    server = MetricsServer(0).start()
    server.close()
    server.close()
