"""One reading of the resources a worker may use: cgroup v2/v1, PSI, psutil as the last resort.

:class:`PressureReader` turns the files of :mod:`kstap.control.cgroups` and :mod:`kstap.control.psi`
into a :class:`~kstap.model.ResourceStats` each tick; :func:`pressure` folds that into one number.
CPU use is a rate: the growth of a usage counter between two reads, over the injected clock.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable

import psutil

from kstap.control import cgroups, proctree
from kstap.control.psi import Psi, read_psi
from kstap.model import ResourceStats
from kstap.pseudofiles import PseudoFiles

PSUTIL_NOTE = "psutil (sees the host, not the container)"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def memory_ratio(stats: ResourceStats) -> float | None:
    """Working set / memory limit, or None without a limit."""
    if not stats.memory_limit:
        return None
    return stats.memory_bytes / stats.memory_limit


def cpu_ratio(stats: ResourceStats) -> float | None:
    """CPU in use / CPU limit (both in cores), or None without a limit."""
    if not stats.cpu_limit:
        return None
    return stats.cpu_cores / stats.cpu_limit


def pressure(stats: ResourceStats) -> float:
    """max(working set / memory limit, CPU use / CPU limit); a missing limit is ignored (0.0 if both are)."""
    ratios = [r for r in (memory_ratio(stats), cpu_ratio(stats)) if r is not None]
    return max(ratios, default=0.0)


TREE_RESCAN_S = 10.0
"""How long the list of child processes is trusted where the kernel keeps no child lists. psutil then
finds children by reading the stat file of every process on the host (~0.6 ms on a quiet machine,
milliseconds on a node); capture workers start with the capture and are replaced rarely, and a child
that ends triggers a new scan at once. With the kernel's lists (:mod:`kstap.control.proctree`) the
tree is walked at every reading."""


class PressureReader:
    """Reads the resource figures of one process (``pid``) as seen under ``root``.

    ``memory_budget`` (bytes) and ``cpu_budget`` (cores) replace whatever limit the cgroups give
    (``--memory-budget`` / ``--cpu-budget``). ``clock`` (seconds, monotonic) times the CPU counters.
    """

    def __init__(
        self,
        *,
        root: str = "/",
        pid: int | str = "self",
        memory_budget: int | None = None,
        cpu_budget: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if memory_budget is not None and memory_budget <= 0:
            raise ValueError("memory_budget must be a positive number of bytes")
        if cpu_budget is not None and not cpu_budget > 0:
            raise ValueError("cpu_budget must be a positive number of cores")
        self.root = root
        self.pid = pid
        self.memory_budget = memory_budget
        self.cpu_budget = cpu_budget
        self.clock = clock
        self._files = PseudoFiles(hold=os.path.realpath(root) == "/")
        """The live host's cgroup and /proc files stay open between readings (a recorded tree's never do)."""
        self._process: psutil.Process | None = None
        self._previous_cpu: tuple[str, float, float] | None = None
        """(counter source, counter seconds, clock seconds) of the previous read."""
        self._cpu_cores = 0.0
        self._host_ram = cgroups.host_memory(root)
        self._cgroups = cgroups.locate(root, pid)
        self._tree_cache: list[psutil.Process] | None = None
        self._tree_scanned = 0.0
        self._located_from: str | None = None
        """The ``/proc/<pid>/cgroup`` text :attr:`_cgroups` was located from."""
        self._cpu_counter(self._tree())  # prime, so the first read() already has a delta

    # -- psutil --------------------------------------------------------------------------------------
    def _psutil_process(self) -> psutil.Process | None:
        if self.pid == "self" and self._process is not None and self._process.pid != os.getpid():
            self._process = None  # built before a fork: "self" is now another process
        if self._process is None:
            try:
                self._process = psutil.Process(None if self.pid == "self" else int(self.pid))
            except (psutil.Error, ValueError):
                return None
        return self._process

    def _tree(self) -> list[psutil.Process]:
        """The process and its descendants (capture workers are children)."""
        process = self._psutil_process()
        if process is None:
            return []
        pids = proctree.descendants(process.pid)
        if pids is not None:  # the kernel's child lists: a few reads, so walked every time
            known = {p.pid: p for p in self._tree_cache or ()}
            tree = [process]
            for pid in pids:
                if (proc := known.get(pid)) is None:
                    try:
                        proc = psutil.Process(pid)
                    except psutil.Error:
                        continue
                tree.append(proc)
            self._tree_cache = tree
            return tree
        if self._tree_cache is not None and self.clock() - self._tree_scanned < TREE_RESCAN_S:
            return self._tree_cache
        try:
            self._tree_cache = [process, *process.children(recursive=True)]
        except psutil.Error:
            self._tree_cache = [process]
        self._tree_scanned = self.clock()
        return self._tree_cache

    def _own_rss(self) -> int | None:
        """This process's RSS from ``/proc/self/statm`` (held open): what psutil reads, without its layers."""
        text = self._files.text("/proc/self/statm")
        try:
            return int(text.split()[1]) * PAGE_SIZE if text else None
        except (IndexError, ValueError):
            return None

    def _process_rss(self, tree: list[psutil.Process]) -> int | None:
        total, seen = 0, False
        me = os.getpid()
        for proc in tree:
            if proc.pid == me and (own := self._own_rss()) is not None:
                total += own
                seen = True
                continue
            try:
                total += int(proc.memory_info().rss)
                seen = True
            except psutil.Error:
                self._tree_cache = None  # a child ended: look for its replacement next time
                continue
        return total if seen else None

    def _process_cpu_seconds(self, tree: list[psutil.Process]) -> float | None:
        total, seen = 0.0, False
        me = os.getpid()
        for proc in tree:
            if proc.pid == me:  # one system call, and µs where /proc/PID/stat has clock ticks
                usage = resource.getrusage(resource.RUSAGE_SELF)
                total += usage.ru_utime + usage.ru_stime
                seen = True
                continue
            try:
                times = proc.cpu_times()
            except psutil.Error:
                self._tree_cache = None
                continue
            total += float(times.user + times.system)
            seen = True
        return total if seen else None

    # -- reading ----------------------------------------------------------------------------------------
    def _relocate(self) -> None:
        """Find the process's cgroups again, parsing mountinfo only when ``/proc/PID/cgroup`` changed
        (a move to another cgroup); mounts under a running capture do not change."""
        text = cgroups.read_text(cgroups.host_path(self.root, f"/proc/{self.pid}/cgroup"), self._files)
        if text is None or text != self._located_from:
            if self._located_from is not None:
                self._files.close()  # the old cgroup's files: the new place is read from now on
            self._cgroups = cgroups.locate(self.root, self.pid)
            self._located_from = text

    def _cpu_counter(self, tree: list[psutil.Process]) -> tuple[cgroups.CpuFigures | None, str, float | None]:
        """(cgroup figures, counter source, cumulative CPU seconds) and update the CPU rate; ``tree``
        is the process tree of this reading (its CPU time is the fallback counter)."""
        figures = cgroups.read_cpu(self._cgroups, self._files)
        seconds: float | None
        own_quota = figures is not None and figures.limit is not None
        if figures is not None and figures.usage_seconds is not None and (own_quota or self.cpu_budget is None):
            source, seconds = f"cgroup v{figures.version} {figures.cgroup}", figures.usage_seconds
        else:
            source, seconds = "psutil process", self._process_cpu_seconds(tree)
        now = self.clock()
        if seconds is not None:
            previous = self._previous_cpu
            if previous is not None and previous[0] == source and now > previous[2]:
                self._cpu_cores = max(0.0, (seconds - previous[1]) / (now - previous[2]))
            if previous is None or previous[0] != source or now > previous[2]:
                self._previous_cpu = (source, seconds, now)
        return figures, source, seconds

    def read(self) -> ResourceStats:
        """One reading. Cheap (a few small files): meant for a ~1 Hz tick."""
        self._relocate()  # again each time: the process may move
        stats = ResourceStats()
        sources: list[str] = []
        tree = self._tree()  # once a reading: the RSS and the CPU fallback both walk it
        rss = self._process_rss(tree)

        memory = cgroups.read_memory(self._cgroups, self._host_ram, self._files)
        if memory is not None and memory.limit is None and self.memory_budget is not None:
            # A cgroup without a limit of its own is not this process's container (a login
            # session, a service slice): against a budget, count this process tree instead.
            memory = None
        if memory is not None:
            stats.memory_bytes = memory.working_set
            stats.memory_usage = memory.usage
            stats.memory_limit = memory.limit
            stats.oom_events = memory.oom_events
            stats.memory_limit_hits = memory.limit_hits
            where = f"memory: cgroup v{memory.version} {memory.cgroup}"
            if memory.limit is not None:
                where += f" (limit of {memory.limit_cgroup})"
            sources.append(where)
        else:
            stats.memory_bytes = stats.memory_usage = rss or 0
            sources.append(f"memory: {PSUTIL_NOTE} process tree RSS" if rss is not None else "memory: unknown")
        if self.memory_budget is not None:
            stats.memory_limit = self.memory_budget
            sources.append("memory limit: budget")

        cpu, counter_source, seconds = self._cpu_counter(tree)
        stats.cpu_cores = self._cpu_cores if seconds is not None else 0.0
        if cpu is not None:
            stats.cpu_limit = cpu.limit
            stats.throttled_periods = cpu.nr_throttled
            stats.throttled_seconds = cpu.throttled_seconds
        if counter_source.startswith("cgroup"):
            where = f"cpu: {counter_source}"
            if cpu is not None and cpu.limit is not None:
                where += f" (quota of {cpu.limit_cgroup})"
            sources.append(where)
        else:
            sources.append(f"cpu: {PSUTIL_NOTE} process tree time" if seconds is not None else "cpu: unknown")
        if self.cpu_budget is not None:
            stats.cpu_limit = self.cpu_budget
            sources.append("cpu limit: budget")

        stats.process_rss = rss
        self._read_psi(stats, sources)
        stats.source = "; ".join(sources)
        return stats

    def _psi(self, resource: str) -> tuple[Psi | None, str]:
        own = cgroups.psi_file(self._cgroups, resource, self._files)
        if own is not None:
            found = read_psi(own, self._files)
            if found is not None:
                return found, "cgroup"
        return read_psi(cgroups.host_path(self.root, f"/proc/pressure/{resource}"), self._files), "/proc/pressure"

    def _read_psi(self, stats: ResourceStats, sources: list[str]) -> None:
        mem, where = self._psi("memory")
        if mem is not None:
            if mem.some is not None:
                stats.psi_memory_some = mem.some.avg10
            if mem.full is not None:
                stats.psi_memory_full = mem.full.avg10
                stats.psi_memory_full_total = mem.full.total
        cpu, cpu_where = self._psi("cpu")
        if cpu is not None and cpu.some is not None:
            stats.psi_cpu_some = cpu.some.avg10
        if mem is not None or cpu is not None:
            sources.append(f"psi: {where if mem is not None else cpu_where}")
