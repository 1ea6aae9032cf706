"""ctypes binding to the system libpcap: only the calls kstap uses.

Loaded lazily, once. A missing libpcap is an environment problem (exit 3), not a traceback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from kstap.errors import EnvironmentProblem

PCAP_ERRBUF_SIZE = 256
PCAP_TSTAMP_PRECISION_NANO = 1
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


class BpfInsn(ctypes.Structure):
    """struct bpf_insn / struct sock_filter (same layout)."""

    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class BpfProgram(ctypes.Structure):
    """struct bpf_program."""

    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(BpfInsn))]


class Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class PcapPkthdr(ctypes.Structure):
    """struct pcap_pkthdr (tv_usec holds nanoseconds on a nanosecond-precision handle)."""

    _fields_ = [("ts", Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


class PcapStat(ctypes.Structure):
    _fields_ = [("ps_recv", ctypes.c_uint), ("ps_drop", ctypes.c_uint), ("ps_ifdrop", ctypes.c_uint)]


def _sig(lib: ctypes.CDLL, name: str, restype: object, *argtypes: object) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


@functools.cache
def lib() -> ctypes.CDLL:
    """The loaded libpcap, with argument and return types declared."""
    path = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
    try:
        pcap = ctypes.CDLL(path, use_errno=True)
    except OSError as exc:
        raise EnvironmentProblem(
            f"libpcap is not installed ({exc})", hint="apt-get install libpcap0.8 (make test/demo do it)"
        ) from exc
    p = ctypes.c_void_p
    _sig(pcap, "pcap_lib_version", ctypes.c_char_p)
    _sig(pcap, "pcap_open_dead", p, ctypes.c_int, ctypes.c_int)
    _sig(pcap, "pcap_close", None, p)
    _sig(pcap, "pcap_geterr", ctypes.c_char_p, p)
    _sig(
        pcap,
        "pcap_compile",
        ctypes.c_int,
        p,
        ctypes.POINTER(BpfProgram),
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
    )
    _sig(pcap, "pcap_freecode", None, ctypes.POINTER(BpfProgram))
    _sig(pcap, "bpf_image", ctypes.c_char_p, ctypes.POINTER(BpfInsn), ctypes.c_int)
    _sig(
        pcap,
        "pcap_offline_filter",
        ctypes.c_int,
        ctypes.POINTER(BpfProgram),
        ctypes.POINTER(PcapPkthdr),
        ctypes.c_char_p,
    )
    # live capture (the libpcap backend)
    _sig(pcap, "pcap_create", p, ctypes.c_char_p, ctypes.c_char_p)
    _sig(pcap, "pcap_set_snaplen", ctypes.c_int, p, ctypes.c_int)
    _sig(pcap, "pcap_set_promisc", ctypes.c_int, p, ctypes.c_int)
    _sig(pcap, "pcap_set_timeout", ctypes.c_int, p, ctypes.c_int)
    _sig(pcap, "pcap_set_buffer_size", ctypes.c_int, p, ctypes.c_int)
    _sig(pcap, "pcap_set_tstamp_precision", ctypes.c_int, p, ctypes.c_int)
    _sig(pcap, "pcap_activate", ctypes.c_int, p)
    _sig(pcap, "pcap_statustostr", ctypes.c_char_p, ctypes.c_int)
    _sig(pcap, "pcap_setfilter", ctypes.c_int, p, ctypes.POINTER(BpfProgram))
    _sig(pcap, "pcap_datalink", ctypes.c_int, p)
    _sig(
        pcap,
        "pcap_next_ex",
        ctypes.c_int,
        p,
        ctypes.POINTER(ctypes.POINTER(PcapPkthdr)),
        ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte)),
    )
    _sig(pcap, "pcap_stats", ctypes.c_int, p, ctypes.POINTER(PcapStat))
    _sig(pcap, "pcap_breakloop", None, p)
    _sig(pcap, "pcap_get_selectable_fd", ctypes.c_int, p)
    _sig(pcap, "pcap_setnonblock", ctypes.c_int, p, ctypes.c_int, ctypes.c_char_p)
    return pcap


def version() -> str:
    """libpcap's own version string, e.g. 'libpcap version 1.10.3 (with TPACKET_V3)'."""
    raw: bytes = lib().pcap_lib_version()
    return raw.decode(errors="replace")
