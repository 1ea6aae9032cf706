"""``kstap tap``: capture local interfaces (or a file) into pcapng."""

from __future__ import annotations

import sys

import typer

from kstap.cli import completion
from kstap.config import parse_rate, parse_seed, parse_size, settle_auto_start
from kstap.errors import ExitCode, KstapError, UsageError


def tap(
    ctx: typer.Context,
    pod_regex: str | None = typer.Argument(None, help="Capture the pods whose names match this regex.",
                                             autocompletion=completion.pods),
    namespace: list[str] = typer.Option([], "-n", "--namespace", help="Kubernetes namespace (repeatable).",
                                         autocompletion=completion.namespaces),
    all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces", help="Pods of every namespace."),
    exclude_namespace: list[str] = typer.Option([], "-e", "--exclude-namespace", help="Skip this namespace.",
                                                 autocompletion=completion.namespaces),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", help="kubeconfig file (default: kubectl's)."),
    context: str | None = typer.Option(None, "--context", help="kubeconfig context.",
                                         autocompletion=completion.contexts),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the targeted pods and each node's filter."),
    worker_image: str | None = typer.Option(None, "--worker-image", help="Image of the capture workers."),
    ready_timeout: float = typer.Option(120.0, "--ready-timeout", help="Seconds to wait for workers Ready."),
    keep_workers: bool = typer.Option(False, "--keep-workers", help="Leave the workers running (kstap clean)."),
    data_path: str = typer.Option("proxy", "--data-path",
                                  help="Reach the workers through the API server (proxy), direct, or auto."),
    api_budget: str = typer.Option("8M", "--api-budget",
                                   help="Bytes/s the capture may take through the API server, e.g. 8M (0: unbounded)."),
    interface: list[str] = typer.Option([], "-i", "--interface", help="Interface to capture on (repeatable)."),
    bpf_filter: str = typer.Option("", "--bpf-filter", "-f", help="BPF capture filter (pcap-filter(7) syntax)."),
    write: str | None = typer.Option(None, "-w", "--write", help="pcapng output file; '-' writes to stdout."),
    duration: float | None = typer.Option(None, "--duration", help="Stop after SECS seconds."),
    count: int | None = typer.Option(None, "-c", "--count", help="Stop after COUNT packets."),
    snaplen: int = typer.Option(262144, "--snaplen", "-s", help="Bytes kept per packet."),
    buffer_size: int = typer.Option(32, "--buffer-size", "-B", help="Kernel ring size per interface, MiB."),
    workers: int = typer.Option(1, "--workers", help="Capture processes joined by PACKET_FANOUT_HASH."),
    read: str | None = typer.Option(None, "--read", "-r", help="Read a pcap/pcapng file instead."),
    realtime: bool = typer.Option(False, "--realtime", help="With --read: pace packets by their timestamps."),
    capture: str = typer.Option("af_packet", "--capture", help="Backend: af_packet, libpcap, pf_ring or best.",
                                 autocompletion=completion.backends),
    netns: str | None = typer.Option(None, "--netns", help="Capture inside this named network namespace."),
    dedup_window: float = typer.Option(50.0, "--dedup-window",
                                       help="-i any: drop copies of a packet seen on another interface within MS "
                                            "(0 keeps them)."),
    rotate_mb: float | None = typer.Option(None, "-C", help="Rotate the file after this many million bytes."),
    ring_files: int | None = typer.Option(None, "-W", help="With -C/-G: keep only the newest N files."),
    rotate_seconds: float | None = typer.Option(None, "-G", help="Rotate the file every SECS seconds."),
    mode: str = typer.Option("full", "--mode", help="Sampling: full, percentage or auto.",
                              autocompletion=completion.modes),
    rate: str | None = typer.Option(None, "--rate", help="Share of flows kept: 0.25 or 25% (auto: the start, 10%)."),
    seed: str | None = typer.Option(None, "--seed", help="32-bit flow-hash seed (default: random per run)."),
    min_rate: str | None = typer.Option(None, "--min-rate", help="auto: lowest rate the controller may set."),
    memory_budget: str | None = typer.Option(None, "--memory-budget", help="Memory to stay under, e.g. 512Mi."),
    cpu_budget: float | None = typer.Option(None, "--cpu-budget", help="CPU cores to stay under."),
    profile: str | None = typer.Option(None, "--profile", help="Preset: dev, staging or prod (flags win).",
                                         autocompletion=completion.profiles),
    entries: str | None = typer.Option(None, "--entries", help="Write dissected requests as NDJSON ('-' = stdout)."),
    dissect_memory: int = typer.Option(64, "--dissect-memory", help="Dissection memory cap, MiB."),
    json_output: bool = typer.Option(False, "--json", help="NDJSON events on stdout (start, stats, …, summary)."),
    dashboard: bool | None = typer.Option(None, "--dashboard/--no-dashboard",
                                          help="Live dashboard (default: on a terminal when writing a file)."),
    progress: bool = typer.Option(False, "--progress", help="Status lines on stderr even when printing packets."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics on this port."),
    max_drop: float | None = typer.Option(None, "--max-drop", help="Exit 5 if kernel drops / received exceeds this."),
    expect_packets: int | None = typer.Option(None, "--expect-packets", help="Exit 5 if fewer packets were captured."),
    config: str | None = typer.Option(None, "--config", help="Config file (default ~/.config/kstap/config.yaml)."),
    set_items: list[str] = typer.Option([], "--set", help="Any setting as key=value (repeatable)."),
) -> int:
    """Capture packets into a Wireshark-ready pcapng, like tcpdump -w, sampling whole flows."""
    from kstap import pipeline
    from kstap.cli import config_cmd, outputs
    from kstap.model import CaptureSummary

    parsed: dict[str, object] = {}
    for key, raw, parse in (("sampling.rate", rate, parse_rate), ("sampling.min_rate", min_rate, parse_rate),
                            ("sampling.seed", seed, parse_seed), ("sampling.memory_budget", memory_budget, parse_size)):
        if raw is not None:
            parsed[key] = parse(raw)
    resolved = config_cmd.resolve_tap_settings(ctx, config=config, set_items=set_items, flags=parsed)
    settings = resolved.settings
    settle_auto_start(settings, {k for k, origin in resolved.origins.items() if origin != "default"},
                      {k for k, origin in resolved.origins.items() if not origin.startswith(("default", "profile"))})
    outputs.check_smoke_args(settings.max_drop, expect_packets)
    from kstap.cli.kube_tap import KubeTapOptions
    from kstap.cli.kube_tap import run as run_kube

    if data_path not in ("auto", "direct", "proxy"):
        raise UsageError(f"--data-path {data_path!r}: not one of auto, direct, proxy",
                         hint="proxy (the default), direct (the nodes' addresses are routable here), or auto")
    budget = parse_size(api_budget)
    kube = KubeTapOptions(pod_regex, list(namespace), all_namespaces, list(exclude_namespace), kubeconfig, context,
                          dry_run, worker_image, ready_timeout, keep_workers, data_path=data_path,
                          api_budget=float(budget) if budget else None)
    if kube.wanted or dry_run:
        if settings.interfaces:
            raise UsageError("-i and pod targets (-n/-A/POD_REGEX) cannot be used together",
                             hint="-i captures a local interface; -n/-A capture pods on the cluster")
        settings.interfaces = ["(cluster)"]  # satisfies validate(): the workers pick their interfaces
    settings.validate()
    outputs.check_output_paths(settings)
    stop = pipeline.StopFlag()
    if kube.dry_run:
        run_kube(kube, settings, None, stop)
        return int(ExitCode.OK)
    reporter = outputs.choose_reporter(
        stop=stop, json_output=json_output, output_path=settings.output.path, dashboard=dashboard,
        progress=progress, metrics_port=metrics_port, run=outputs.RunInfo.from_settings(settings))
    with reporter:
        try:
            if kube.wanted:
                summary = run_kube(kube, settings, reporter, stop)
            else:
                summary = pipeline.run_tap(settings, reporter, stop,
                                           lines=sys.stdout if reporter.packet_lines else None)
        except KstapError as exc:
            if isinstance(exc.summary, CaptureSummary):
                reporter.summary(exc.summary, error=exc)
            raise
        failure = outputs.smoke_check(summary, max_drop=settings.max_drop, expect_packets=expect_packets)
        reporter.summary(summary, error=failure)
    if failure:
        raise failure
    return int(ExitCode.OK)
