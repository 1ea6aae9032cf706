"""``kstap worker``: argument checks, exit codes, and a token that never shows up anywhere.

Nothing here captures traffic: every case fails before capture starts (or on a missing interface).
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import pytest

from kstap.cli.worker_cmd import parse_listen, read_token
from kstap.errors import UsageError

TOKEN = secrets.token_hex(16)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def test_worker_is_a_command(cli) -> None:
    r = cli("worker", "--help")
    assert r.code == 0 and "--token-file" in r.out and "--listen" in r.out


@pytest.mark.parametrize("args", [
    [],  # no token source
    ["--token-file", "/nonexistent/token"],
    ["--token-file", "{tf}", "--token-env", "KSTAP_T"],
])
def test_token_source_problems_are_usage_errors(cli, two_line_error, token_file: Path, args: list[str]) -> None:
    argv = ["worker", "--listen", "127.0.0.1:0", "-i", "lo", *[a.format(tf=token_file) for a in args]]
    r = cli(*argv)
    assert r.code == 2
    two_line_error(r.err, "")
    assert TOKEN not in r.err + r.out


def test_a_weak_token_is_refused_without_being_shown(cli, two_line_error, tmp_path: Path) -> None:
    weak = tmp_path / "weak"
    weak.write_text("hunter2")
    r = cli("worker", "--listen", "127.0.0.1:0", "-i", "lo", "--token-file", str(weak))
    assert r.code == 2 and "too weak" in r.err and "hunter2" not in r.err
    two_line_error(r.err, "the token from --token-file")


def test_token_from_the_environment_is_removed_from_it(monkeypatch) -> None:
    monkeypatch.setenv("KSTAP_TEST_TOKEN", TOKEN)
    assert read_token(None, "KSTAP_TEST_TOKEN") == TOKEN
    assert "KSTAP_TEST_TOKEN" not in os.environ
    with pytest.raises(UsageError):
        read_token(None, "KSTAP_TEST_TOKEN")  # gone now: missing


@pytest.mark.parametrize("text", ["nonsense", "127.0.0.1", "127.0.0.1:99999", ":9090", "[::1]:x", "host:-1"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_listen(text)


def test_listen_forms() -> None:
    assert parse_listen("0.0.0.0:9090") == ("0.0.0.0", 9090)
    assert parse_listen("[::]:0") == ("::", 0)
    assert parse_listen("localhost:1") == ("localhost", 1)


@pytest.mark.parametrize("args", [["--entries", "maybe"], ["--backlog", "0"], ["--linger", "-1"],
                                  ["--mode", "percentage"], ["--rate", "2"], ["--listen", "127.0.0.1"]])
def test_bad_options_exit_2(cli, token_file: Path, args: list[str]) -> None:
    r = cli("worker", "--listen", "127.0.0.1:0", "-i", "lo", "--token-file", str(token_file), *args)
    assert r.code == 2, r.err
    assert "kstap: error:" in r.err and "Traceback" not in r.err


def test_a_port_in_use_is_a_usage_error(cli, two_line_error, token_file: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        r = cli("worker", "--listen", f"127.0.0.1:{port}", "-i", "lo", "--token-file", str(token_file))
    finally:
        busy.close()
    assert r.code == 2
    two_line_error(r.err, f"cannot listen on 127.0.0.1:{port}")


def test_a_missing_interface_fails_cleanly_and_never_prints_the_token(cli, token_file: Path) -> None:
    r = cli("worker", "--listen", "127.0.0.1:0", "-i", "kstap-no-such-if", "--token-file", str(token_file),
            "--linger", "0")
    assert r.code == 2, r.err
    assert "no such interface" in r.err and "Traceback" not in r.err
    assert "kstap worker: serving http://127.0.0.1:" in r.err
    assert TOKEN not in r.err + r.out


def test_the_seed_comes_from_a_file_and_bad_files_are_usage_errors(tmp_path: Path) -> None:
    from kstap.cli.worker_cmd import read_seed

    good = tmp_path / "seed"
    good.write_text("0x5eed\n")
    assert read_seed(str(good)) == 0x5EED
    for name, content in (("word", "not-a-seed"), ("big", str(1 << 40)), ("huge", "1" * 100)):
        bad = tmp_path / name
        bad.write_text(content)
        with pytest.raises(UsageError) as exc:
            read_seed(str(bad))
        assert content not in exc.value.message  # the file's content is never echoed
    with pytest.raises(UsageError):
        read_seed(str(tmp_path / "missing"))


def test_seed_and_seed_file_conflict(cli, two_line_error, token_file: Path, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.write_text("7")
    r = cli("worker", "--listen", "127.0.0.1:0", "-i", "lo", "--token-file", str(token_file),
            "--seed", "7", "--seed-file", str(seed))
    assert r.code == 2 and "at most one of --seed and --seed-file" in r.err
