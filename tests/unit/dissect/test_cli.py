"""``kstap dissect``: entries out, summary on stderr, exit codes (in-process, through kstap.cli.main)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dissect_traffic import Conversation, dns_query, dns_response, udp_frame

from kstap.cli.main import run
from kstap.dissect.api import Entry
from kstap.dissect.entries import EntryWriter


def capture(path: Path) -> Path:
    c = Conversation().handshake()
    c.send(b"GET /hello HTTP/1.1\r\nHost: example.test\r\n\r\n")
    c.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    c.fin()
    recs = list(c.records)
    for i, f in enumerate((udp_frame("10.0.0.1", "10.0.0.53", 5353 + 1, 53, dns_query("a.test", 9)),
                           udp_frame("10.0.0.53", "10.0.0.1", 53, 5354, dns_response("a.test", 9)))):
        recs.append((c.t + (i + 1) * 1000, len(f), len(f), f, 0, 0))
    from tests.conftest import make_pcap_bytes

    path.write_bytes(make_pcap_bytes([(ts, data) for ts, _, _, data, _, _ in recs]))
    return path


def call(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dissect_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(["dissect", str(capture(tmp_path / "c.pcap")), "--entries", "-"], capsys)
    assert code == 0, err
    entries = [json.loads(line) for line in out.splitlines()]
    assert [(e["protocol"], e.get("path"), e.get("query_name")) for e in entries] == [
        ("http/1.1", "/hello", None), ("dns", None, "a.test")]
    assert all(e["schema"] == 1 for e in entries)
    assert "kstap: dissected 10 packets: 2 entries to stdout" in err
    assert "entries by protocol: dns 1, http/1.1 1" in err
    assert "connections ended: fin 1" in err


def test_dissect_to_file_and_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "e.ndjson"
    code, out, err = call(["dissect", str(capture(tmp_path / "c.pcap")), "--entries", str(out_file),
                           "--seed", "42", "--dissect-memory", "1"], capsys)
    assert code == 0 and out == "", err
    lines = out_file.read_text().splitlines()
    assert len(lines) == 2 and out_file.stat().st_mode & 0o777 == 0o600
    code2, out2, _ = call(["dissect", str(tmp_path / "c.pcap")], capsys)
    assert code2 == 0
    assert json.loads(lines[0])["flow_id"] != json.loads(out2.splitlines()[0])["flow_id"]  # seed 42 vs 0


def test_missing_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = call(["dissect", str(tmp_path / "nope.pcapng")], capsys)
    assert code == 2
    assert err.startswith("kstap: error: cannot read") and "\nhint: " in err


def test_bad_options_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(capture(tmp_path / "c.pcap"))
    assert call(["dissect", path, "--dissect-memory", "0"], capsys)[0] == 2
    assert call(["dissect", path, "--entries", str(tmp_path / "no" / "dir.ndjson")], capsys)[0] == 2


def test_damaged_file_keeps_what_was_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = capture(tmp_path / "c.pcap")
    raw = path.read_bytes()
    path.write_bytes(raw[:-30])  # the last DNS answer is cut short
    code, out, err = call(["dissect", str(path), "--entries", "-"], capsys)
    assert code == 1
    entries = [json.loads(line) for line in out.splitlines()]
    assert [e["protocol"] for e in entries] == ["http/1.1", "dns"]
    assert entries[1]["error"] == "no-response"
    assert "kstap: error: " in err and "truncated" in err and "hint: the 9 packets" in err


def test_not_a_capture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(b"hello, this is text\n")
    code, out, err = call(["dissect", str(path)], capsys)
    assert code == 1 and out == ""
    assert "not a pcap or pcapng file" in err


def test_entry_writer_batches(tmp_path: Path) -> None:
    w = EntryWriter(str(tmp_path / "x.ndjson"))
    w.write(Entry(time=1.0, flow_id="1", protocol="dns", client="a", server="b", query_name="é.test"))
    assert (tmp_path / "x.ndjson").read_text() == ""
    w.flush()
    assert json.loads((tmp_path / "x.ndjson").read_text())["query_name"] == "é.test"
    w.close()
    assert w.count == 1


def test_dissect_loads_no_capture_stage(tmp_path: Path) -> None:
    """Start-up is part of the throughput goal (docs/benchmarks-dissect.md): ``kstap dissect`` imports the
    dissector, not the capture side (sources, sampler, loop, BPF compiler) nor the other commands."""
    import subprocess
    import sys

    probe = ("import sys; from kstap.cli.main import run; "
             "rc = run(['dissect', sys.argv[1], '--entries', sys.argv[2]]); "
             "print(rc, ' '.join(sorted(m for m in sys.modules if m.startswith('kstap.'))))")
    out = subprocess.run([sys.executable, "-c", probe, str(capture(tmp_path / "c.pcap")), str(tmp_path / "e.ndjson")],
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert out[0] == "0" and (tmp_path / "e.ndjson").read_text().count("\n") == 2
    loaded = set(out[1:])
    assert "kstap.dissect.stage" in loaded
    for heavy in ("kstap.pipeline.assembly", "kstap.pipeline.loop", "kstap.capture.backends", "kstap.filters.bpf",
                  "kstap.sampling.sampler", "kstap.cli.tap", "kstap.cli.demo"):
        assert heavy not in loaded, heavy
