"""``kstap filter``: show the final capture filter and, with -d, its classic BPF program."""

from __future__ import annotations

import typer

from kstap.errors import ExitCode


def filter_command(
    bpf_filter: str = typer.Option("", "--bpf-filter", "-f", help="BPF expression (pcap-filter(7))."),
    dump: bool = typer.Option(False, "-d", help="Print the compiled program as 'tcpdump -d' does."),
    snaplen: int = typer.Option(262144, "--snaplen", "-s", help="Snapshot length the program returns."),
    interface: str | None = typer.Option(None, "-i", "--interface",
                                         help="Compile as for a live capture on IFACE (needs CAP_NET_RAW)."),
    netns: str | None = typer.Option(None, "--netns", help="With -i: the interface's network namespace."),
) -> int:
    """Compile the capture filter kstap would use and print it."""
    from kstap.filters.bpf import compile_filter, final_expression

    expression = final_expression(bpf_filter)
    if interface:
        from kstap.capture import netns as namespaces
        from kstap.capture.pcap_live import compile_for_live

        with namespaces.entered(netns):
            program = compile_for_live(interface, expression, snaplen)
    else:
        program = compile_filter(expression, snaplen=snaplen)
    if dump:
        for line in program.image():
            print(line)
    else:
        print(expression or "(no filter: every packet)")
    return int(ExitCode.OK)
