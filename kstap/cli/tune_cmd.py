"""``kstap tune``: the highest sampling rate a memory budget sustains, found by real trials."""

from __future__ import annotations

import json
import shlex
import sys

import typer

from kstap.errors import ExitCode, KstapError, UsageError


def tune(
    read: str | None = typer.Option(None, "--read", "-r", help="Workload: replay this capture for each trial."),
    interface: str | None = typer.Option(None, "-i", "--interface", help="Workload: live traffic on IFACE."),
    netns: str | None = typer.Option(None, "--netns", help="With -i: the interface's network namespace."),
    duration: float = typer.Option(10.0, "--duration", help="With -i: seconds per trial."),
    memory_budget: str = typer.Option(..., "--memory-budget", help="The memory limit to tune for, e.g. 256Mi."),
    bpf_filter: str = typer.Option("", "--bpf-filter", "-f", help="BPF filter, as for kstap tap."),
    dissect_memory: int = typer.Option(4096, "--dissect-memory",
                                       help="Dissection cap in trials, MiB (high: the budget is the limit)."),
    start: str = typer.Option("100%", "--start", help="Baseline rate."),
    tolerance: str = typer.Option("2%", "--tolerance", help="Stop when OOM and stable rates are this close."),
    max_steps: int = typer.Option(20, "--max-steps", help="Trials at most (stability runs excluded)."),
    seed: str = typer.Option("0x5eed", "--seed", help="Flow-hash seed: the same flows in every trial."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per step and a result object."),
) -> int:
    """Find the highest rate that runs without OOM under --memory-budget (real cgroup trials)."""
    from kstap.config import check_memory_budget, parse_rate, parse_seed, parse_size
    from kstap.control.memcg import run_limited
    from kstap.tune import Step
    from kstap.tune import tune as search

    if (read is None) == (interface is None):
        raise UsageError("give the workload: --read FILE or -i IFACE", hint="e.g. kstap tune --read busy.pcapng "
                                                                             "--memory-budget 256Mi")
    budget = parse_size(memory_budget)
    check_memory_budget(budget)
    seed_value = parse_seed(seed)
    base = [sys.executable, "-m", "kstap", "tap", "--no-dashboard", "-w", "/dev/null", "--entries", "/dev/null",
            "--dissect-memory", str(dissect_memory), "--seed", hex(seed_value)]
    if bpf_filter:
        base += ["-f", bpf_filter]
    if read is not None:
        base += ["--read", read]
    else:
        assert interface is not None
        base += ["-i", interface, "--duration", str(duration)] + (["--netns", netns] if netns else [])
    timeout = max(120.0, duration * 3)

    def trial(rate: float) -> tuple[bool, int]:
        mode = ["--mode", "full"] if rate >= 1.0 else ["--mode", "percentage", "--rate", f"{rate:.4f}"]
        outcome = run_limited([*base, *mode], budget, timeout=timeout)
        if not outcome.oom and outcome.returncode != 0:
            last = outcome.stderr.strip().splitlines()[-2:] if outcome.stderr.strip() else ["(no output)"]
            raise KstapError(f"trial at rate {rate:.3g} failed (exit {outcome.returncode}): {' '.join(last)}",
                             hint="check the workload with kstap tap first")
        return outcome.oom, outcome.peak_bytes

    def show(step: Step) -> None:
        if json_output:
            print(json.dumps({"schema": 1, "event": "step", "step": step.number, "phase": step.phase,
                              "rate": step.rate, "oom": step.oom, "peak_bytes": step.peak_bytes}), flush=True)
        else:
            verdict = "OOM-killed" if step.oom else "stable"
            print(f"step {step.number:2d}  {step.phase:<9}  rate {step.rate:7.2%}  {verdict:<10}  "
                  f"peak {step.peak_bytes / 2**20:7.1f} MiB of {budget / 2**20:.0f} MiB", flush=True)

    result = search(trial, start=parse_rate(start), tolerance=parse_rate(tolerance), max_steps=max_steps,
                    on_step=show)
    if result.recommended is None:
        raise KstapError(f"no rate down to 1% ran under {memory_budget} without OOM",
                         hint="raise the budget, narrow the filter, or lower --dissect-memory")
    rate = result.recommended
    mode = "full" if rate >= 1.0 else "percentage"
    command = ["kstap", "tap", "--mode", mode] + ([] if mode == "full" else ["--rate", f"{rate:.0%}"])
    if bpf_filter:
        command += ["--bpf-filter", bpf_filter]
    if json_output:
        print(json.dumps({"schema": 1, "event": "result", "recommended_rate": rate, "mode": mode,
                          "memory_budget": budget, "steps": len(result.steps), "command": shlex.join(command)}))
    else:
        print(f"\nrecommended rate: {rate:.2%} under {memory_budget} "
              f"({len(result.steps)} trials, stability run passed)")
        print(f"command line:     {shlex.join(command)}")
        print("config snippet (~/.config/kstap/config.yaml):")
        print(f"  sampling:\n    mode: {mode}\n    rate: {rate:.4f}\n    memory_budget: {budget}")
        auto = ["kstap", "tap", "--mode", "auto", "--memory-budget", memory_budget]
        print(f"auto mode alternative: {shlex.join(auto)}")
    return int(ExitCode.OK)
