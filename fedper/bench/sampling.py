"""Memory and CPU of the benchmark process and every process under it (Ray's GCS, raylet,
agents and workers, or the plain loop's workers), sampled in a background thread."""

from __future__ import annotations

import importlib
import resource
import threading
import time
from pathlib import Path

# Ray's own processes, by the name `process_name` gives them: what each is for
RAY_HELPERS = {
    "gcs_server": "cluster metadata (needed)",
    "raylet": "scheduler and object store (needed)",
    "ray::DashboardAgent": "per-node agent (the raylet fate-shares with it)",
    "ray::RuntimeEnvAgent": "runtime environments (the raylet fate-shares with it)",
    "dashboard.py": "API server (with include_dashboard=False: usage stats only)",
    "monitor.py": "autoscaler monitor",
    "log_monitor.py": "forwards worker output to the driver",
}


def psutil_module():
    """psutil ships inside Ray (ray/thirdparty_files), which importing ray puts on the path."""
    import ray  # noqa: F401

    return importlib.import_module("psutil")


def process_tree(pid: int | None = None) -> list:
    """A process (this one by default) and all its descendants."""
    root = psutil_module().Process(pid)
    return [root, *root.children(recursive=True)]


def memory_shares(pid: int) -> dict[str, int]:
    """Bytes of physical memory a process accounts for: `pss` with shared pages split among
    their sharers, `uss` its private pages alone (what ending it would free)."""
    fields = {"Pss:": "pss", "Private_Clean:": "uss", "Private_Dirty:": "uss"}
    out = {"pss": 0, "uss": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                key = line.split(maxsplit=1)[0]
                if key in fields:
                    out[fields[key]] += int(line.split()[1]) * 1024
    except OSError:
        pass  # not Linux, or the process ended
    return out


def resident_kinds(pid: int) -> dict[str, int]:
    """RSS split into private memory, mapped files (libraries) and shared memory (Ray's
    object store), in bytes: the second and third are counted again in every process.
    """
    kinds = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    out = dict.fromkeys(kinds.values(), 0)
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key = line.split(maxsplit=1)[0]
                if key in kinds:
                    out[kinds[key]] = int(line.split()[1]) * 1024
    except OSError:
        pass  # not Linux, or the process ended
    return out


def process_name(process) -> str:
    """A short name: Ray names its workers `ray::<Actor>`; others by their script."""
    try:
        args = process.cmdline()
    except Exception:
        return "?"
    if not args:
        return process.name()
    if args[0].startswith("ray::"):
        return args[0].split()[0]
    script = next((a for a in args[1:] if a.endswith(".py") or a == "-m"), args[0])
    if script == "-m" and len(args) > args.index("-m") + 1:
        script = args[args.index("-m") + 1]
    return Path(script).name


class MemorySampler:
    """Peak summed RSS of the process tree, and CPU seconds per process.

    Summed RSS counts a shared library once per process that maps it (torch alone is about
    300 MB of shared pages per process), so at a new peak each process's PSS and USS are
    read too: at most once per `pss_every` seconds, and only once the peak is `pss_growth`
    above the one they were last read at. A read costs ~20 ms of CPU per process and walks
    its page tables, too much to repeat while a run's memory creeps up a little each round.
    The process list is refreshed once a second: listing it scans all of /proc.
    """

    def __init__(
        self,
        interval: float,
        pss_every: float = 2.0,
        list_every: float = 1.0,
        pss_growth: float = 0.02,
    ) -> None:
        self.interval = interval
        self.pss_every = pss_every
        self.pss_growth = pss_growth
        self.list_every = list_every
        self.peak_bytes = 0
        self.peak_processes = 0
        self.pss_at_peak_bytes = 0
        self.peak_by_process: list[dict] = []
        self._processes: list = []
        self._names: dict[int, str] = {}
        self._cpu: dict[int, tuple[str, float, float]] = {}  # pid -> name, first, last
        self._pss_read_at = self._listed_at = -float("inf")
        self._shares_due = False  # a new peak whose PSS and USS were not read yet
        self._shares_read_at_bytes = 0  # the summed RSS when they were last read
        self._shares: dict[int, dict[str, int]] = {}  # pid -> its PSS and USS, last read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        if time.monotonic() - self._listed_at >= self.list_every:
            self._listed_at = time.monotonic()
            self._processes = process_tree()
            # named again at each listing: a Ray worker starts as setup_worker.py, then
            # takes its actor's name
            self._names = {p.pid: process_name(p) for p in self._processes}
        rss = []
        for process in self._processes:
            try:
                rss.append((process, process.memory_info().rss))
                cpu = sum(process.cpu_times()[:2])
            except Exception:
                continue  # a worker that ended between listing and reading
            _, first, _ = self._cpu.get(process.pid, (None, cpu, cpu))
            self._cpu[process.pid] = (self._names.get(process.pid, "?"), first, cpu)
        total = sum(r for _, r in rss)
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, len(rss)
            # each process's PSS and USS as last read (at most `pss_every` seconds ago)
            self.peak_by_process = [
                {"name": self._names.get(p.pid, "?"), "pid": p.pid, "rss": r,
                 **resident_kinds(p.pid), **self._shares.get(p.pid, {})} for p, r in rss
            ]  # fmt: skip
            self._shares_due = total > self._shares_read_at_bytes * (1 + self.pss_growth)
        # read again at the peak or, when the last read was too recent, at the next sample
        # that is still within 5% of it
        recent = time.monotonic() - self._pss_read_at < self.pss_every
        if self._shares_due and not recent and total >= 0.95 * self.peak_bytes:
            self._pss_read_at, self._shares_read_at_bytes = time.monotonic(), total
            self._shares_due = False
            self._shares = {e["pid"]: memory_shares(e["pid"]) for e in self.peak_by_process}
            self.pss_at_peak_bytes = sum(share["pss"] for share in self._shares.values())
            for entry in self.peak_by_process:
                entry.update(self._shares[entry["pid"]])

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) each kind of process used while sampled."""
        totals: dict[str, float] = {}
        for name, first, last in self._cpu.values():
            totals[name] = totals.get(name, 0.0) + last - first
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def processes_started(self) -> dict[str, int]:
        """How many processes of each kind were seen (Ray workers that came and went too)."""
        counts: dict[str, int] = {}
        for name, _, _ in self._cpu.values():
            counts[name] = counts.get(name, 0) + 1
        return counts

    def summary(self) -> dict:
        """The peak, split by process and by kind of memory, for bench.json."""
        helpers = [p for p in self.peak_by_process if p["name"] in RAY_HELPERS]
        return {
            "peak_all_processes_bytes": self.peak_bytes,
            "peak_processes": self.peak_processes,
            "pss_near_peak_all_processes_bytes": self.pss_at_peak_bytes,
            "peak_rss_by_process_bytes": self.peak_by_process,
            "ray_helpers_rss_bytes": sum(p["rss"] for p in helpers),
            "sample_interval_seconds": self.interval,
        }

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # the last CPU reading


def driver_max_rss_bytes() -> int:
    """This process's own lifetime peak (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
