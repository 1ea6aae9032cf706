"""The bpf(2) system call through ctypes: maps, program loading, attaching to a socket.

Only what kstap's in-kernel flow table needs: ``BPF_MAP_CREATE`` (an array for the settings, an
LRU hash for flow decisions, an array user space maps into memory), element lookup/update,
``BPF_PROG_LOAD`` of a socket filter with the verifier's log on failure, and ``SO_ATTACH_BPF``.
Needs CAP_BPF (or CAP_SYS_ADMIN) unless ``kernel.unprivileged_bpf_disabled`` is 0; :func:`probe`
says whether this process can.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import os
import platform
import socket
import struct
from dataclasses import dataclass

SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}

MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY, PROG_LOAD = 0, 1, 2, 3, 4, 5
PROG_TEST_RUN = 10
MAP_TYPE_HASH, MAP_TYPE_ARRAY, MAP_TYPE_LRU_HASH = 1, 2, 9
F_MMAPABLE = 1 << 10
"""An array map user space can mmap (Linux 5.5): read without a system call."""
PROG_TYPE_SOCKET_FILTER = 1
ANY = 0
SO_ATTACH_BPF = 50
ATTR_SIZE = 128
"""Big enough for every field used here; the kernel checks that the tail it does not know is zero."""


class BpfError(OSError):
    """A bpf() call failed; ``log`` holds the verifier's words for a refused program."""

    def __init__(self, errno_: int, what: str, log: str = "") -> None:
        super().__init__(errno_, f"{what}: {os.strerror(errno_)}")
        self.log = log

    @property
    def why(self) -> str:
        """The verifier's reason (the last line of its log before its statistics), else the error."""
        lines = [line.strip() for line in self.log.splitlines() if line.strip()]
        words = [line for line in lines if not line.startswith(("processed ", "verification time"))]
        return words[-1] if words else str(self)


_libc: ctypes.CDLL | None = None


def _syscall(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    nr = SYS_BPF.get(platform.machine())
    if nr is None:
        raise BpfError(38, f"bpf() on {platform.machine()}")  # ENOSYS
    _libc.syscall.restype = ctypes.c_long
    rc = int(_libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(ATTR_SIZE)))
    if rc < 0:
        raise BpfError(ctypes.get_errno(), _CMD_NAMES.get(cmd, str(cmd)))
    return rc


_CMD_NAMES = {MAP_CREATE: "BPF_MAP_CREATE", MAP_LOOKUP_ELEM: "BPF_MAP_LOOKUP_ELEM",
              MAP_UPDATE_ELEM: "BPF_MAP_UPDATE_ELEM", MAP_DELETE_ELEM: "BPF_MAP_DELETE_ELEM",
              MAP_GET_NEXT_KEY: "BPF_MAP_GET_NEXT_KEY", PROG_LOAD: "BPF_PROG_LOAD",
              PROG_TEST_RUN: "BPF_PROG_TEST_RUN"}


def _attr(payload: bytes) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(payload.ljust(ATTR_SIZE, b"\0"), ATTR_SIZE)


@dataclass
class Map:
    """A BPF map owned by this process (closed with :meth:`close`)."""

    fd: int
    key_size: int
    value_size: int
    max_entries: int

    @classmethod
    def create(cls, map_type: int, key_size: int, value_size: int, max_entries: int, name: str = "",
               flags: int = 0) -> Map:
        # map_type, key_size, value_size, max_entries, map_flags, inner_map_fd, numa_node, map_name[16]
        attr = struct.pack("<7I16s", map_type, key_size, value_size, max_entries, flags, 0, 0, name.encode()[:15])
        return cls(_syscall(MAP_CREATE, _attr(attr)), key_size, value_size, max_entries)

    def _elem(self, cmd: int, key: bytes, value: ctypes.Array[ctypes.c_char] | None, flags: int = 0) -> int:
        if len(key) != self.key_size:
            raise ValueError(f"key of {len(key)} bytes for a map with {self.key_size}-byte keys")
        kbuf = ctypes.create_string_buffer(key, len(key))
        vaddr = ctypes.addressof(value) if value is not None else 0
        attr = struct.pack("<IIQQQ", self.fd, 0, ctypes.addressof(kbuf), vaddr, flags)
        return _syscall(cmd, _attr(attr))

    def update(self, key: bytes, value: bytes, flags: int = ANY) -> None:
        if len(value) != self.value_size:
            raise ValueError(f"value of {len(value)} bytes for a map with {self.value_size}-byte values")
        self._elem(MAP_UPDATE_ELEM, key, ctypes.create_string_buffer(value, len(value)), flags)

    def lookup(self, key: bytes) -> bytes | None:
        buf = ctypes.create_string_buffer(self.value_size)
        try:
            self._elem(MAP_LOOKUP_ELEM, key, buf)
        except BpfError as exc:
            if exc.errno == 2:  # ENOENT
                return None
            raise
        return buf.raw

    def mapped(self) -> mmap.mmap:
        """The values of an array map created with :data:`F_MMAPABLE`, mapped read-only (the caller
        closes it): element i at ``i * value_size``, as the kernel's programs see it now."""
        size = -(-self.value_size * self.max_entries // mmap.PAGESIZE) * mmap.PAGESIZE
        return mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ)

    def delete(self, key: bytes) -> bool:
        try:
            self._elem(MAP_DELETE_ELEM, key, None)
        except BpfError as exc:
            if exc.errno == 2:
                return False
            raise
        return True

    def keys(self, limit: int = 1 << 22) -> list[bytes]:
        """Every key (BPF_MAP_GET_NEXT_KEY walk; entries may come and go meanwhile)."""
        out: list[bytes] = []
        nxt = ctypes.create_string_buffer(self.key_size)
        cur: ctypes.Array[ctypes.c_char] | None = None
        while len(out) < limit:
            caddr = ctypes.addressof(cur) if cur is not None else 0
            attr = struct.pack("<IIQQ", self.fd, 0, caddr, ctypes.addressof(nxt))
            try:
                _syscall(MAP_GET_NEXT_KEY, _attr(attr))
            except BpfError as exc:
                if exc.errno == 2:
                    break
                raise
            out.append(nxt.raw)
            cur = ctypes.create_string_buffer(nxt.raw, self.key_size)
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@functools.cache
def possible_cpus() -> int:
    """How many CPUs the kernel may ever bring up (/sys/devices/system/cpu/possible, e.g. "0-7"):
    the number of values a per-CPU map element has."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def load_socket_filter(code: bytes, name: str = "kstap", log_size: int = 1 << 20) -> int:
    """Load ``code`` as a socket filter; returns its fd. A refusal raises with the verifier log."""
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version, prog_flags,
    # prog_name[16]
    def attempt(level: int, log: ctypes.Array[ctypes.c_char] | None) -> int:
        attr = struct.pack("<IIQQIIQII16s", PROG_TYPE_SOCKET_FILTER, len(code) // 8, ctypes.addressof(insns),
                           ctypes.addressof(license_), level, len(log) if log is not None else 0,
                           ctypes.addressof(log) if log is not None else 0, 0, 0, name.encode()[:15])
        return _syscall(PROG_LOAD, _attr(attr))

    try:
        return attempt(0, None)
    except BpfError as exc:
        if exc.errno not in (13, 22, 7, 28):  # EACCES/EINVAL (verifier), E2BIG, ENOSPC: fetch the log
            raise
        first = exc
    log = ctypes.create_string_buffer(log_size)
    try:
        return attempt(1, log)
    except BpfError as exc:
        text = log.value.decode(errors="replace")
        raise BpfError(exc.errno, "BPF_PROG_LOAD", text) from first


def test_run(prog_fd: int, frame: bytes) -> int:
    """BPF_PROG_TEST_RUN: the program's return value on ``frame`` (an Ethernet frame; a socket
    filter then sees it from the network header on, as on a SOCK_DGRAM socket)."""
    data = ctypes.create_string_buffer(frame, len(frame))
    # prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat, duration
    attr = _attr(struct.pack("<IIIIQQII", prog_fd, 0, len(frame), 0, ctypes.addressof(data), 0, 1, 0))
    _syscall(PROG_TEST_RUN, attr)
    return int(struct.unpack_from("<I", attr.raw, 4)[0])


def attach(sock: socket.socket, prog_fd: int) -> None:
    """SO_ATTACH_BPF: the program replaces any filter on the socket (atomically)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, prog_fd)


def probe() -> str | None:
    """None when this process can create an LRU hash map; else why not (for a warning)."""
    try:
        m = Map.create(MAP_TYPE_LRU_HASH, 4, 8, 16, "kstap_probe")
    except BpfError as exc:
        if exc.errno in (1, 13):
            return "no CAP_BPF (or CAP_SYS_ADMIN) to create BPF maps"
        return str(exc)
    m.close()
    return None
