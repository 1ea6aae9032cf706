"""Capture filters: BPF expressions compiled with libpcap."""
