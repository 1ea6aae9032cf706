"""Find a process's own cgroups (v1 and v2) and read its memory and CPU figures from them.

Every path is taken under a ``root`` directory, so tests feed recorded trees (``proc/self/cgroup``,
``proc/self/mountinfo``, ``sys/fs/cgroup/...``) exactly as the live host would show them.

Where each figure comes from (docs/control.md has the full table):

- v2: ``memory.max``, ``memory.current``, ``memory.stat`` (``inactive_file``), ``memory.events``
  (``oom``, ``oom_kill``, ``max``), ``cpu.max``, ``cpu.stat`` (``usage_usec``, ``nr_throttled``,
  ``throttled_usec``).
- v1: ``memory.limit_in_bytes``, ``memory.usage_in_bytes``, ``memory.stat`` (``total_inactive_file``,
  ``hierarchical_memory_limit``), ``memory.oom_control`` (``oom_kill``), ``memory.failcnt``,
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, ``cpu.stat`` (``nr_throttled``, ``throttled_time``),
  ``cpuacct.usage``.

Limits: walking from the process's cgroup up to the top of the mounted hierarchy, the smallest
limit wins, and usage is read in the cgroup that owns it (that is the cgroup the kernel compares
against the limit, siblings included). ``max``, v1's "unlimited" (2^63 rounded to a page) and
anything at or above 2^62 or above the host's RAM mean no limit.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

from kstap.pseudofiles import PLAIN, PseudoFiles

UNLIMITED_FLOOR = 1 << 62
"""Limits at or above this are "no limit" (v1 writes 9223372036854771712 for unlimited)."""


# -- files under a root ----------------------------------------------------------------------------
def host_path(root: str, path: str) -> str:
    """``path`` (absolute, as the host names it) under ``root``."""
    return os.path.join(root, path.lstrip("/"))


def read_text(path: str, files: PseudoFiles = PLAIN) -> str | None:
    return files.text(path)


def read_int(path: str, files: PseudoFiles = PLAIN) -> int | None:
    text = read_text(path, files)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def parse_keyed(text: str | None) -> dict[str, int]:
    """``key value`` lines (memory.stat, memory.events, cpu.stat, memory.oom_control)."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def host_memory(root: str) -> int | None:
    """MemTotal from ``/proc/meminfo`` in bytes, or None."""
    for line in (read_text(host_path(root, "/proc/meminfo")) or "").splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            try:
                return int(parts[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None


def parse_limit(text: str | None, host_ram: int | None = None) -> int | None:
    """A memory limit in bytes, or None for none: ``max``, -1, ≥ 2^62, above host RAM, unreadable."""
    if text is None:
        return None
    value = text.strip()
    if value in ("", "max"):
        return None
    try:
        limit = int(value)
    except ValueError:
        return None
    if limit < 0 or limit >= UNLIMITED_FLOOR or (host_ram is not None and limit > host_ram):
        return None
    return limit


# -- where the process's cgroups are ------------------------------------------------------------------
@dataclass(frozen=True)
class CgroupEntry:
    """One line of ``/proc/<pid>/cgroup``: ``hierarchy-id:controllers:path``."""

    hierarchy: int
    controllers: tuple[str, ...]
    """Empty for the v2 (unified) line ``0::/path``."""
    path: str


def parse_proc_cgroup(text: str) -> list[CgroupEntry]:
    entries = []
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        try:
            hierarchy = int(parts[0])
        except ValueError:
            continue
        controllers = tuple(c for c in parts[1].split(",") if c)
        entries.append(CgroupEntry(hierarchy, controllers, parts[2] or "/"))
    return entries


@dataclass(frozen=True)
class Mount:
    """The parts of one ``/proc/<pid>/mountinfo`` line that locate a cgroup hierarchy."""

    mount_point: str
    root: str
    """The path inside the hierarchy that is mounted at ``mount_point``."""
    fstype: str
    super_options: frozenset[str]
    """For v1: the controllers of the hierarchy (``memory``, ``cpu``, ``cpuacct``, ...)."""


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 6 or len(fields) < sep + 3:
            continue
        mounts.append(Mount(mount_point=_unescape(fields[4]), root=_unescape(fields[3]), fstype=fields[sep + 1],
                            super_options=frozenset(fields[sep + 3].split(","))))
    return mounts


@dataclass(frozen=True)
class Cgroup:
    """The process's cgroup in one hierarchy, and where its files are."""

    version: int
    path: str
    """The cgroup's path in its hierarchy, as ``/proc/<pid>/cgroup`` gives it."""
    directory: str
    """Its directory (under the reader's root)."""
    top: str
    """The mount point's directory: the walk up the tree stops there (a container sees no further)."""
    top_path: str
    """The hierarchy path mounted at ``top``."""

    def levels(self) -> list[tuple[str, str]]:
        """(hierarchy path, directory) from this cgroup up to the top of the mount, leaf first."""
        return list(self._levels)

    @functools.cached_property
    def _levels(self) -> list[tuple[str, str]]:
        """Worked out once: a :class:`Cgroup` is one place (a move means locating anew)."""
        rel = os.path.relpath(self.directory, self.top)
        parts = [] if rel == "." else rel.split(os.sep)
        out = []
        for i in range(len(parts), -1, -1):
            hpath = "/".join([self.top_path.rstrip("/"), *parts[:i]]) or "/"
            out.append((hpath, os.path.join(self.top, *parts[:i])))
        return out

    @property
    def is_hierarchy_root(self) -> bool:
        """True for the hierarchy's root cgroup, whose figures are the whole host's (or a namespace's)."""
        return self.path == "/"

    def file(self, name: str) -> str:
        return os.path.join(self.directory, name)


@dataclass(frozen=True)
class CgroupSet:
    """All cgroups of one process: the v2 one (if a cgroup2 hierarchy is mounted) and v1 by controller."""

    v2: Cgroup | None
    v1: dict[str, Cgroup]


def _resolve(root: str, version: int, path: str, mounts: list[Mount]) -> Cgroup | None:
    best: tuple[int, Mount, str] | None = None
    for mount in mounts:
        mroot = mount.root.rstrip("/") or "/"
        if mroot == "/":
            rel = path
        elif path == mroot or path.startswith(mroot + "/"):
            rel = path[len(mroot):]
        else:
            continue
        score = len(mroot)
        if best is None or score > best[0]:
            best = (score, mount, rel)
    if best is None:
        # A cgroup namespace can show a path that is not under any mount's root: use the mount itself.
        if not mounts:
            return None
        best = (0, mounts[0], "")
    _, mount, rel = best
    top = host_path(root, mount.mount_point)
    directory = os.path.normpath(os.path.join(top, rel.lstrip("/"))) if rel.strip("/") else top
    return Cgroup(version, path, directory, top, mount.root)


def locate(root: str = "/", pid: int | str = "self") -> CgroupSet:
    """The cgroups of ``pid`` from ``/proc/<pid>/cgroup`` and ``/proc/<pid>/mountinfo`` under ``root``."""
    proc = host_path(root, f"/proc/{pid}")
    entries = parse_proc_cgroup(read_text(os.path.join(proc, "cgroup")) or "")
    mounts = parse_mountinfo(read_text(os.path.join(proc, "mountinfo")) or "")
    v2_mounts = [m for m in mounts if m.fstype == "cgroup2"]
    v1_mounts = [m for m in mounts if m.fstype == "cgroup"]
    v2: Cgroup | None = None
    v1: dict[str, Cgroup] = {}
    for entry in entries:
        if entry.hierarchy == 0 and not entry.controllers:
            v2 = _resolve(root, 2, entry.path, v2_mounts) if v2_mounts else None
            continue
        for controller in entry.controllers:
            if controller.startswith("name="):
                continue
            candidates = [m for m in v1_mounts if controller in m.super_options]
            cg = _resolve(root, 1, entry.path, candidates) if candidates else None
            if cg is not None:
                v1[controller] = cg
    return CgroupSet(v2, v1)


# -- memory ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryFigures:
    version: int
    cgroup: str
    """Hierarchy path of the cgroup whose usage is reported (the limit's owner, else the process's)."""
    usage: int
    """Bytes charged to the cgroup, page cache included."""
    working_set: int
    """usage - inactive file pages: what reclaim cannot easily give back (kubelet's figure)."""
    limit: int | None
    limit_cgroup: str | None
    """Hierarchy path of the cgroup whose limit won (the smallest up the tree)."""
    oom_events: int
    """v2: ``oom`` + ``oom_kill`` of memory.events; v1: ``oom_kill`` of memory.oom_control.
    The largest value from the process's cgroup up to the limit's owner (parents count their children)."""
    limit_hits: int
    """v2: the ``max`` event count; v1: memory.failcnt. Reclaim at the limit, not an OOM."""


def _tightest(levels: list[tuple[str, str]], limit_of: dict[str, int | None]) -> tuple[int, str, str] | None:
    best: tuple[int, str, str] | None = None
    for hpath, directory in levels:
        limit = limit_of.get(directory)
        if limit is not None and (best is None or limit < best[0]):
            best = (limit, hpath, directory)
    return best


def _upto(levels: list[tuple[str, str]], directory: str | None) -> list[tuple[str, str]]:
    """Levels from the leaf up to and including ``directory`` (only the leaf when None)."""
    out = []
    for level in levels:
        out.append(level)
        if directory is None or level[1] == directory:
            break
    return out


def read_memory_v2(cg: Cgroup, host_ram: int | None = None, files: PseudoFiles = PLAIN) -> MemoryFigures | None:
    if read_int(cg.file("memory.current"), files) is None:
        return None  # the v2 root cgroup, or the memory controller is not enabled here
    levels = cg.levels()
    limits = {d: parse_limit(read_text(os.path.join(d, "memory.max"), files), host_ram) for _, d in levels}
    best = _tightest(levels, limits)
    hpath, directory = (best[1], best[2]) if best else (cg.path, cg.directory)
    usage = read_int(os.path.join(directory, "memory.current"), files)
    if usage is None:
        hpath, directory = cg.path, cg.directory
        usage = read_int(cg.file("memory.current"), files) or 0
    stat = parse_keyed(read_text(os.path.join(directory, "memory.stat"), files))
    events = [parse_keyed(read_text(os.path.join(d, "memory.events"), files)) for _, d in _upto(levels, directory)]
    own = parse_keyed(read_text(os.path.join(directory, "memory.events"), files))
    return MemoryFigures(
        version=2, cgroup=hpath, usage=usage, working_set=max(0, usage - stat.get("inactive_file", 0)),
        limit=best[0] if best else None, limit_cgroup=best[1] if best else None,
        oom_events=max((e.get("oom", 0) + e.get("oom_kill", 0) for e in events), default=0),
        limit_hits=own.get("max", 0),
    )


def read_memory_v1(cg: Cgroup, host_ram: int | None = None, files: PseudoFiles = PLAIN) -> MemoryFigures | None:
    if read_int(cg.file("memory.usage_in_bytes"), files) is None:
        return None
    levels = cg.levels()
    limits = {d: parse_limit(read_text(os.path.join(d, "memory.limit_in_bytes"), files), host_ram) for _, d in levels}
    best = _tightest(levels, limits)
    leaf_stat = parse_keyed(read_text(cg.file("memory.stat"), files))
    hierarchical = parse_limit(str(leaf_stat.get("hierarchical_memory_limit", "max")), host_ram)
    if hierarchical is not None and (best is None or hierarchical < best[0]):
        # an ancestor above what this mount shows (a container's view): usage of our own cgroup is all we see
        best = (hierarchical, "(ancestor: hierarchical_memory_limit)", cg.directory)
    if best is None and cg.is_hierarchy_root:
        return None  # the v1 root: host-wide figures, not this process's
    hpath, directory = (cg.path, cg.directory) if best is None or best[2] == cg.directory else (best[1], best[2])
    usage = read_int(os.path.join(directory, "memory.usage_in_bytes"), files)
    if usage is None:
        hpath, directory = cg.path, cg.directory
        usage = read_int(cg.file("memory.usage_in_bytes"), files) or 0
    stat = (leaf_stat if directory == cg.directory
            else parse_keyed(read_text(os.path.join(directory, "memory.stat"), files)))
    inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    ooms = [parse_keyed(read_text(os.path.join(d, "memory.oom_control"), files)).get("oom_kill", 0)
            for _, d in _upto(levels, directory)]
    return MemoryFigures(
        version=1, cgroup=hpath, usage=usage, working_set=max(0, usage - inactive),
        limit=best[0] if best else None, limit_cgroup=best[1] if best else None,
        oom_events=max(ooms, default=0),
        limit_hits=read_int(os.path.join(directory, "memory.failcnt"), files) or 0,
    )


def read_memory(cgroups: CgroupSet, host_ram: int | None = None, files: PseudoFiles = PLAIN) -> MemoryFigures | None:
    """v2 where the memory controller is on for the process's cgroup, else v1, else None."""
    if cgroups.v2 is not None:
        figures = read_memory_v2(cgroups.v2, host_ram, files)
        if figures is not None:
            return figures
    if "memory" in cgroups.v1:
        return read_memory_v1(cgroups.v1["memory"], host_ram, files)
    return None


# -- CPU ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CpuFigures:
    version: int
    cgroup: str
    """Hierarchy path of the cgroup whose usage is reported (the quota's owner, else the process's)."""
    usage_seconds: float | None
    """Cumulative CPU time of that cgroup (a counter); None when not readable."""
    limit: float | None
    """Quota in cores (quota / period), the smallest up the tree."""
    limit_cgroup: str | None
    nr_throttled: int
    """Periods in which the cgroup ran out of quota (a counter)."""
    throttled_seconds: float
    """Time spent throttled (a counter)."""


def parse_cpu_max(text: str | None) -> float | None:
    """v2 ``cpu.max`` (``max 100000`` or ``50000 100000``) in cores, None for no quota."""
    parts = (text or "").split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(directory: str, files: PseudoFiles = PLAIN) -> float | None:
    quota = read_int(os.path.join(directory, "cpu.cfs_quota_us"), files)
    period = read_int(os.path.join(directory, "cpu.cfs_period_us"), files)
    if quota is None or quota <= 0 or not period or period <= 0:
        return None
    return quota / period


def _cheapest(levels: list[tuple[str, str]], quota_of: dict[str, float | None]) -> tuple[float, str, str] | None:
    best: tuple[float, str, str] | None = None
    for hpath, directory in levels:
        quota = quota_of.get(directory)
        if quota is not None and (best is None or quota < best[0]):
            best = (quota, hpath, directory)
    return best


def read_cpu_v2(cg: Cgroup, files: PseudoFiles = PLAIN) -> CpuFigures | None:
    has_controller = files.exists(cg.file("cpu.max"))
    if not files.exists(cg.file("cpu.stat")) or (cg.is_hierarchy_root and not has_controller):
        return None  # the real v2 root: its cpu.stat is the whole host
    levels = cg.levels()
    best = _cheapest(levels, {d: parse_cpu_max(read_text(os.path.join(d, "cpu.max"), files)) for _, d in levels})
    hpath, directory = (best[1], best[2]) if best else (cg.path, cg.directory)
    stat = parse_keyed(read_text(os.path.join(directory, "cpu.stat"), files))
    usage = stat.get("usage_usec")
    return CpuFigures(
        version=2, cgroup=hpath, usage_seconds=usage / 1e6 if usage is not None else None,
        limit=best[0] if best else None, limit_cgroup=best[1] if best else None,
        nr_throttled=stat.get("nr_throttled", 0), throttled_seconds=stat.get("throttled_usec", 0) / 1e6,
    )


def read_cpu_v1(cpu: Cgroup | None, cpuacct: Cgroup | None, files: PseudoFiles = PLAIN) -> CpuFigures | None:
    best = None
    if cpu is not None:
        levels = cpu.levels()
        best = _cheapest(levels, {d: _quota_v1(d, files) for _, d in levels})
    anchor = cpu or cpuacct
    if anchor is None or (best is None and anchor.is_hierarchy_root):
        return None  # no hierarchy, or the v1 root without a quota: host-wide figures
    hpath, directory = (best[1], best[2]) if best else (anchor.path, anchor.directory)
    stat = parse_keyed(read_text(os.path.join(directory, "cpu.stat"), files)) if cpu is not None else {}
    usage_ns = None
    if cpuacct is not None:
        # cpuacct may share the hierarchy (cpu,cpuacct) or be its own: read the same cgroup path there,
        # else the process's own cpuacct cgroup, but never the cpuacct root (that is the whole host)
        same = [d for h, d in cpuacct.levels() if h == hpath]
        if same:
            usage_ns = read_int(os.path.join(same[0], "cpuacct.usage"), files)
        elif not cpuacct.is_hierarchy_root:
            usage_ns = read_int(cpuacct.file("cpuacct.usage"), files)
    return CpuFigures(
        version=1, cgroup=hpath, usage_seconds=usage_ns / 1e9 if usage_ns is not None else None,
        limit=best[0] if best else None, limit_cgroup=best[1] if best else None,
        nr_throttled=stat.get("nr_throttled", 0), throttled_seconds=stat.get("throttled_time", 0) / 1e9,
    )


def read_cpu(cgroups: CgroupSet, files: PseudoFiles = PLAIN) -> CpuFigures | None:
    """v2 where it describes the process's own cgroup, else v1 (cpu + cpuacct), else None."""
    if cgroups.v2 is not None:
        figures = read_cpu_v2(cgroups.v2, files)
        # a hybrid host keeps the cpu controller on v1: v2 then only has usage, v1 has the quota
        if figures is not None and (figures.limit is not None or "cpu" not in cgroups.v1):
            return figures
    v1 = read_cpu_v1(cgroups.v1.get("cpu"), cgroups.v1.get("cpuacct"), files)
    if v1 is not None:
        return v1
    return read_cpu_v2(cgroups.v2, files) if cgroups.v2 is not None else None


def psi_file(cgroups: CgroupSet, resource: str, files: PseudoFiles = PLAIN) -> str | None:
    """The process's own cgroup v2 ``<resource>.pressure`` file, if it has one.

    Not the real v2 root's (that one is the host's, as in /proc/pressure); a cgroup namespace's root
    (a container's own cgroup shown as ``/``) has ``memory.current`` and counts as the process's own.
    """
    cg = cgroups.v2
    if cg is None or (cg.is_hierarchy_root and not files.exists(cg.file("memory.current"))):
        return None
    path = cg.file(f"{resource}.pressure")
    return path if files.exists(path) else None
