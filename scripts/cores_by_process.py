"""Which processes use the CPU while a command runs: cores in use by kind of process, per
time window, read from /proc (Linux) for the command and every process under it.

    python scripts/cores_by_process.py [--every 0.5] [--window 8] -- python -m fedper.bench

Kinds: the command itself (`driver`), Flower's Ray actors (`actor`), Ray's own processes
(`ray`: GCS, raylet, agents), and any other child by its program name (the benchmark's plain
loop workers show as `python`). One line per window, e.g. `16s actor=1.76 driver=0.08
ray=0.02`: with 2 cores, what the actors do not get went to the others or to waiting.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections import defaultdict
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass  # the thread or the process ended
    return out


def tree(root: int) -> list[int]:
    todo, seen = [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo += children(pid)
    return seen


def kind(pid: int, root: int) -> str | None:
    if pid == root:
        return "driver"
    try:
        args = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return None
    if "ClientAppActor" in args[0]:
        return "actor"
    if args[0].startswith("ray::") or any("/ray/" in arg for arg in args):
        return "ray"
    return Path(args[0].split()[0]).name if args[0] else None


def cpu_seconds(pid: int) -> float | None:
    """User plus system time of one process (fields 14 and 15 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--window", type=float, default=8.0, help="seconds per printed line")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to watch after --")

    child = subprocess.Popen(command)
    start, last = time.monotonic(), {}
    used: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    while child.poll() is None:
        now = {}
        for pid in tree(child.pid):
            seconds, name = cpu_seconds(pid), kind(pid, child.pid)
            if seconds is not None and name is not None:
                now[pid] = (name, seconds)
        window = int((time.monotonic() - start) // args.window)
        for pid, (name, seconds) in now.items():
            if pid in last:
                used[window][name] += seconds - last[pid][1]
        last = now
        # a fixed-rate sampler: the process is watched, not waited for
        time.sleep(args.every)
    print(f"cores in use, by kind of process, per {args.window:g} s window:")
    for window in sorted(used):
        parts = sorted(used[window].items(), key=lambda item: -item[1])
        text = "  ".join(f"{name}={value / args.window:.2f}" for name, value in parts if value)
        print(f"{window * args.window:6.0f}s  {text}")
    raise SystemExit(child.returncode)


if __name__ == "__main__":
    main()
