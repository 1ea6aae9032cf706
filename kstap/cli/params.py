"""How options read in help, kubectl and tcpdump style: ``-n, --namespace NAMESPACE``, ``-f EXPR``, bare flags.

Typer shows a Python type for every option (``<list[str]>``, ``<bool>``); :func:`polish` walks the built
click command tree once and gives each option a metavar: the name in :data:`METAVARS`, else the option's
own name in capitals. Flags get none, as ``tcpdump -h`` and ``kubectl --help`` print them.
"""

from __future__ import annotations

from typing import Any

METAVARS = {
    "namespace": "NAMESPACE", "exclude_namespace": "NAMESPACE", "kubeconfig": "FILE", "context": "CONTEXT",
    "worker_image": "IMAGE", "ready_timeout": "SECS", "interface": "IFACE", "bpf_filter": "EXPR", "write": "FILE",
    "duration": "SECS", "count": "COUNT", "snaplen": "BYTES", "buffer_size": "MIB", "workers": "N", "read": "FILE",
    "capture": "BACKEND", "netns": "NETNS", "rotate_mb": "MB", "ring_files": "N", "rotate_seconds": "SECS",
    "mode": "MODE", "rate": "RATE", "seed": "SEED", "min_rate": "RATE", "memory_budget": "SIZE",
    "cpu_budget": "CORES", "profile": "PROFILE", "entries": "FILE", "dissect_memory": "MIB",
    "metrics_port": "PORT", "max_drop": "RATIO", "expect_packets": "COUNT", "config": "FILE",
    "set_items": "KEY=VALUE", "output": "FILE", "listen": "HOST:PORT", "token_file": "FILE", "token_env": "VAR",
    "seed_file": "FILE", "node": "NODE", "backlog": "MIB", "linger": "SECS", "udp_pps": "PPS", "port": "PORT",
    "start": "RATE", "title": "TITLE", "tolerance": "RATE", "max_steps": "N", "idle_timeout": "SECS",
    "run_id": "RUN_ID", "expression": "EXPR", "file": "FILE", "pod_regex": "POD_REGEX",
}
"""Option (parameter) name → its metavar; kubectl's and tcpdump's words where they have one."""


def metavar(param: Any) -> str:
    """The metavar ``param`` gets: '' for a flag, else :data:`METAVARS` or its name in capitals."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    name = str(param.name or "")
    return METAVARS.get(name, name.upper())


def _no_type(ctx: Any = None) -> None:
    return None


HELP_OPTIONS = ["-h", "--help"]
"""kubectl's and tcpdump's: ``-h`` works everywhere ``--help`` does."""


def polish(command: Any) -> Any:
    """Set every option's and argument's metavar in the tree under ``command`` (returns it)."""
    ctx = command.context_class(command, help_option_names=HELP_OPTIONS)
    help_option = command.get_help_option(ctx)  # made once and kept by the command
    if help_option is not None:
        help_option.metavar = ""
    for param in getattr(command, "params", []):
        if getattr(param, "metavar", None) is None:
            param.metavar = metavar(param)
        if getattr(param, "param_type_name", "") == "argument" and hasattr(param, "display_type_rich"):
            param.display_type_rich = _no_type  # an argument's name is its metavar: no '<str>' beside it
    for sub in (getattr(command, "commands", None) or {}).values():
        polish(sub)
    return command
