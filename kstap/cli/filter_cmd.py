"""``kstap filter``: show the final capture filter and, with -d, its classic BPF program."""

from __future__ import annotations

import typer

from kstap.errors import ExitCode


def filter_command(
    bpf_filter: str = typer.Option("", "--bpf-filter", "-f", help="BPF expression (pcap-filter(7))."),
    dump: bool = typer.Option(False, "-d", help="Print the compiled program as 'tcpdump -d' does."),
    snaplen: int = typer.Option(262144, "--snaplen", "-s", help="Snapshot length the program returns."),
) -> int:
    """Compile the capture filter kstap would use and print it."""
    from kstap.filters.bpf import compile_filter, final_expression

    expression = final_expression(bpf_filter)
    program = compile_filter(expression, snaplen=snaplen)
    if dump:
        for line in program.image():
            print(line)
    else:
        print(expression or "(no filter: every packet)")
    return int(ExitCode.OK)
