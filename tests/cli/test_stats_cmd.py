"""``kstap stats FILE [--json]``: the numbers, the JSON object, exit codes for bad input."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest

from kstap.estimate.capture_stats import STATS_SCHEMA, read_capture_stats
from kstap.sampling.flowhash import seed_id

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit" / "estimate"))
import known_traffic as kt

SEED = 0x5EED
SWITCH_NS = kt.T0 + 30 * 1_000_000_000


@pytest.fixture(scope="module")
def sampled_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 known flows, auto mode, rate 0.5 then 0.2 from t = 30 s, 4 kernel drops."""
    traffic = kt.make_traffic(300, random.Random(7))
    sampled = kt.sample(traffic, SEED, kt.step(0.5, 0.2, SWITCH_NS), "auto", [(SWITCH_NS, 0.2, 0.5)])
    return kt.write_sampled(tmp_path_factory.mktemp("stats") / "sampled.pcapng", sampled, seed=SEED, rate=0.5,
                            mode="auto", dropped=4)


TOP_KEYS = {"schema", "file", "format", "complete", "error", "packets_read", "first_ns", "last_ns", "sampled",
            "run", "observed", "estimates", "flows_sampled", "flows_with_comment", "inclusion_probability",
            "rate_timeline", "shed_flows", "kernel_drops", "warnings"}


def _check_schema(d: dict[str, object]) -> None:
    assert set(d) == TOP_KEYS
    assert d["schema"] == STATS_SCHEMA
    est = d["estimates"]
    assert isinstance(est, dict)
    for measure in ("packets", "bytes", "flows"):
        e = est[measure]
        assert set(e) == {"observed", "estimate", "variance", "std_error", "ci95"}
        low, high = e["ci95"]
        assert e["observed"] <= low <= e["estimate"] <= high
    assert est["confidence"] == 0.95
    assert set(d["observed"]) == {"packets", "bytes", "flows", "non_ip_packets"}  # type: ignore[arg-type]
    assert set(d["rate_timeline"]) == {"known", "initial", "min", "mean", "max", "changes"}  # type: ignore[arg-type]
    assert set(d["kernel_drops"]) == {"dropped", "received", "interfaces", "note"}  # type: ignore[arg-type]


def test_human_table_has_the_numbers(cli, sampled_file: Path) -> None:
    s = read_capture_stats(str(sampled_file))
    res = cli("stats", str(sampled_file))
    assert res.code == 0, res.err
    out = res.out
    e = s.estimates
    for value in (e.packets.observed, e.packets.total, e.packets.low, e.packets.high, e.bytes.observed,
                  e.bytes.total, e.flows.observed, e.flows.total, e.flows.high):
        assert f"{value:,.0f}" in out, (value, out)
    assert "packets" in out and "bytes" in out and "flows" in out and "95% interval" in out
    assert "mode auto, rate 0.5" in out
    assert "min 0.2, mean" in out and "max 0.5; 1 change" in out
    assert re.search(r"  \+29\.\d{3}s \(\d\d:\d\d:\d\d\.\d{3} UTC\)  0\.5 → 0\.2 \(pi\)$", out, re.M), out
    assert "kernel drops" in out and "4 of" in out and "not in the estimates" in out
    assert res.err.splitlines() == [
        "kstap: warning: the kernel dropped 4 packet(s) of kept flows (ring full): drops are not sampling "
        "and are not in the estimates"]


def test_json_object(cli, sampled_file: Path) -> None:
    res = cli("stats", str(sampled_file), "--json")
    assert res.code == 0, res.err
    assert len(res.out.splitlines()) == 1  # one object, one line
    d = json.loads(res.out)
    _check_schema(d)
    s = read_capture_stats(str(sampled_file))
    assert d["estimates"]["packets"]["estimate"] == pytest.approx(s.estimates.packets.total)
    assert d["observed"]["flows"] == d["flows_sampled"] == s.flows_sampled
    assert d["complete"] is True and d["error"] is None
    assert d["run"] == {"mode": "auto", "rate": 0.5, "seed": seed_id(SEED), "filter": "ip or ip6"}
    assert [(c["previous"], c["rate"], c["reason"]) for c in d["rate_timeline"]["changes"]] == [(0.5, 0.2, "pi")]
    assert 0.2 < d["rate_timeline"]["mean"] < 0.5
    assert d["kernel_drops"]["dropped"] == 4


def test_unsampled_capture(cli, tmp_path: Path, frames, pcap) -> None:
    path = pcap(tmp_path / "plain.pcap", [(kt.T0 + i, f) for i, f in enumerate(frames.mixed(16))])
    res = cli("stats", str(path))
    assert res.code == 0 and res.err == ""
    assert "sampling: none recorded" in res.out and "not recorded" in res.out
    d = json.loads(cli("stats", "--json", str(path)).out)
    _check_schema(d)
    assert d["sampled"] is False and d["estimates"]["packets"]["ci95"] == [16, 16]


def test_missing_file_exits_2(cli, tmp_path: Path, two_line_error) -> None:
    res = cli("stats", str(tmp_path / "nope.pcapng"))
    assert res.code == 2 and res.out == ""
    two_line_error(res.err, f"cannot read '{tmp_path / 'nope.pcapng'}': no such file")


def test_no_file_argument_exits_2(cli) -> None:
    assert cli("stats").code == 2


def test_garbage_exits_1(cli, tmp_path: Path, two_line_error) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"GET / HTTP/1.1\r\n" * 20)
    for extra in ([], ["--json"]):
        res = cli("stats", str(garbage), *extra)
        assert res.code == 1 and res.out == ""
        two_line_error(res.err, f"{garbage}: not a pcap or pcapng file")


@pytest.mark.parametrize("as_json", [False, True])
def test_truncated_file_prints_what_was_read_and_exits_1(cli, tmp_path: Path, sampled_file: Path,
                                                         as_json: bool) -> None:
    data = sampled_file.read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: len(data) // 2])
    res = cli("stats", str(cut), *(["--json"] if as_json else []))
    assert res.code == 1
    lines = res.err.splitlines()
    assert "Traceback" not in res.err
    assert any(line.startswith("kstap: warning: the file stops being a valid capture after") for line in lines)
    assert lines[-2].startswith(f"kstap: error: {cut}: truncated block after")
    assert lines[-1].startswith("hint: the estimates printed cover the")
    if as_json:
        d = json.loads(res.out)
        _check_schema(d)
        assert d["complete"] is False and "truncated" in d["error"]
        assert 0 < d["packets_read"] < read_capture_stats(str(sampled_file)).packets_read
    else:
        assert "damaged" in res.out and "estimated total" in res.out


def test_as_a_process(kstap_proc, sampled_file: Path) -> None:
    r = kstap_proc("stats", "--json", str(sampled_file))
    assert r.returncode == 0, r.stderr
    _check_schema(json.loads(r.stdout))
    assert "stats" in kstap_proc("--help").stdout
