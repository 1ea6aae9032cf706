"""``kstap worker``: the process a worker pod runs: capture on this node, serve it over HTTP.

The token comes from a file (a mounted Secret) or an environment variable, never from argv, and
is never printed. See docs/kubernetes.md, "Workers and their API".
"""

from __future__ import annotations

import os
import stat

import typer

from kstap.config import SamplingSettings, TapSettings, parse_rate, parse_seed, parse_size, settle_auto_start
from kstap.errors import ExitCode, UsageError

FLOW_TABLE_ENV = "KSTAP_SAMPLING_FLOW_TABLE"
"""The variable ``kstap tap`` reads sampling.flow_table from (kstap/settings_sources.py)."""
MIN_TOKEN = 16
MAX_TOKEN = 4096


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port); port 0 picks a free one."""
    raw = text.strip()
    hint = "e.g. --listen 0.0.0.0:9090, --listen 127.0.0.1:0 or --listen [::]:9090"
    if raw.startswith("["):
        host, sep, port = raw[1:].partition("]:")
    else:
        host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"bad --listen address {text!r}", hint=hint)
    return host, int(port)


def read_token(token_file: str | None, token_env: str | None) -> str:
    """The token from exactly one of --token-file / --token-env; errors never show it."""
    if (token_file is None) == (token_env is None):
        raise UsageError("give exactly one of --token-file PATH or --token-env VAR",
                         hint="the token is a shared secret: it never goes on the command line")
    if token_file is not None:
        try:
            st = os.stat(token_file)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_TOKEN:
                raise UsageError(f"--token-file {token_file!r} is not a small regular file",
                                 hint="the file holds the API token (the run's Secret mounts one)")
            with open(token_file, encoding="utf-8") as f:
                token = f.read(MAX_TOKEN).strip()
        except OSError as exc:
            raise UsageError(f"cannot read --token-file {token_file!r}: {exc.strerror}",
                             hint="mount the token Secret there, or use --token-env VAR") from None
        except UnicodeDecodeError:
            raise UsageError(f"--token-file {token_file!r} is not text",
                             hint="the file holds the API token as text") from None
        where = f"--token-file {token_file!r}"
    else:
        assert token_env is not None
        token = os.environ.pop(token_env, "").strip()  # gone from the environment: children do not inherit it
        where = f"--token-env {token_env}"
    if len(token) < MIN_TOKEN or any(c.isspace() or not c.isprintable() for c in token):
        raise UsageError(f"the token from {where} is missing or too weak",
                         hint=f"use at least {MIN_TOKEN} printable characters without spaces, "
                              "e.g. from 'openssl rand -hex 32'")
    return token


def read_seed(path: str) -> int:
    """The seed from a small file (the run's Secret, mounted); errors never show the file's content."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 64:
            raise UsageError(f"--seed-file {path!r} is not a small regular file",
                             hint="the file holds one number (the run's Secret mounts one)")
        with open(path, encoding="ascii") as f:
            text = f.read(64).strip()
    except OSError as exc:
        raise UsageError(f"cannot read --seed-file {path!r}: {exc.strerror}",
                         hint="mount the run's Secret there (its 'seed' key)") from None
    except UnicodeDecodeError:
        raise UsageError(f"--seed-file {path!r} is not text",
                         hint="the file holds one number, decimal or 0x-hex") from None
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"--seed-file {path!r} does not hold a number",
                         hint="a 32-bit number, decimal or 0x-hex") from None
    if not 0 <= value < 1 << 32:
        raise UsageError(f"the seed in --seed-file {path!r} is not a 32-bit number",
                         hint="the file holds one number, decimal or 0x-hex, below 2**32")
    return value


def worker(
    listen: str = typer.Option(..., "--listen", help="HOST:PORT for the HTTP API (port 0: any free port)."),
    token_file: str | None = typer.Option(None, "--token-file", help="File holding the API token."),
    token_env: str | None = typer.Option(None, "--token-env", help="Environment variable holding the API token."),
    interface: list[str] = typer.Option([], "-i", "--interface", help="Interface to capture on (repeatable)."),
    netns: str | None = typer.Option(None, "--netns", help="Capture inside this named network namespace."),
    bpf_filter: str = typer.Option("", "--bpf-filter", "-f", help="BPF capture filter (pcap-filter(7) syntax)."),
    mode: str = typer.Option("full", "--mode", help="Sampling: full, percentage or auto."),
    rate: str | None = typer.Option(None, "--rate", help="Share of flows kept: 0.25 or 25% (auto: the start)."),
    seed: str | None = typer.Option(None, "--seed", help="32-bit flow-hash seed; the same on every node of a run."),
    seed_file: str | None = typer.Option(None, "--seed-file", help="File holding the seed (a mounted Secret)."),
    min_rate: str | None = typer.Option(None, "--min-rate", help="auto: lowest rate the controller may set."),
    memory_budget: str | None = typer.Option(None, "--memory-budget", help="Memory to stay under, e.g. 512Mi."),
    cpu_budget: float | None = typer.Option(None, "--cpu-budget", help="CPU cores to stay under."),
    flow_table: str | None = typer.Option(
        None, "--flow-table", metavar="TABLE",
        help="Where auto mode decides flows: kernel (eBPF, needs CAP_BPF), user (classic filter) or auto "
             "(kernel where it can). Default: $KSTAP_SAMPLING_FLOW_TABLE, else auto."),
    entries: str = typer.Option("off", "--entries", help="on: dissect and publish request/response entries."),
    node: str | None = typer.Option(None, "--node", help="Node name to report (default: $NODE_NAME or hostname)."),
    snaplen: int = typer.Option(262144, "--snaplen", "-s", help="Bytes kept per packet."),
    buffer_size: int = typer.Option(32, "--buffer-size", "-B", help="Kernel ring size per interface, MiB."),
    backlog: int = typer.Option(32, "--backlog", help="MiB of frames kept for readers that reconnect."),
    linger: float = typer.Option(5.0, "--linger", help="Seconds to keep serving after the capture ends."),
    duration: float | None = typer.Option(None, "--duration", help="Stop after SECS seconds (default: on SIGTERM)."),
) -> int:
    """Run a capture worker: capture + sampling (+ dissection) here, served over an HTTP API."""
    from kstap.worker import Worker, WorkerSettings

    host, port = parse_listen(listen)
    token = read_token(token_file, token_env)
    if entries not in ("on", "off"):
        raise UsageError(f"--entries must be on or off, not {entries!r}", hint="--entries on or --entries off")
    if not 1 <= backlog <= 4096:
        raise UsageError("--backlog must be between 1 and 4096 MiB", hint="the default is 32 (MiB)")
    if not 0 <= linger <= 300:
        raise UsageError("--linger must be between 0 and 300 seconds", hint="the default is 5 (seconds)")
    sampling = SamplingSettings(mode=mode)
    explicit = {"sampling.mode"}  # the worker runs the mode it is given (the CLI always passes it)
    if rate is not None:
        sampling.rate = parse_rate(rate)
        explicit.add("sampling.rate")
    if seed is not None and seed_file is not None:
        raise UsageError("give at most one of --seed and --seed-file",
                         hint="on a cluster the seed comes from the run's Secret (--seed-file)")
    if seed is not None:
        sampling.seed = parse_seed(seed)
    if seed_file is not None:
        sampling.seed = read_seed(seed_file)
    if min_rate is not None:
        sampling.min_rate = parse_rate(min_rate)
        explicit.add("sampling.min_rate")
    if memory_budget is not None:
        sampling.memory_budget = parse_size(memory_budget)
    sampling.cpu_budget = cpu_budget
    # as for `kstap tap`: the setting sampling.flow_table, here from the flag or its environment variable
    sampling.flow_table = (flow_table if flow_table is not None else
                           os.environ.get(FLOW_TABLE_ENV, "").strip() or sampling.flow_table)
    tap = TapSettings(interfaces=list(interface), bpf_filter=bpf_filter, netns=netns, snaplen=snaplen,
                      buffer_mib=buffer_size, duration=duration, sampling=sampling)
    settle_auto_start(tap, explicit)
    tap.validate()
    settings = WorkerSettings(tap=tap, listen=(host, port), token=token, node=node or "",
                              entries=entries == "on", backlog_bytes=backlog << 20, linger=linger)
    Worker(settings).run()
    return int(ExitCode.OK)
