"""Which processes use the CPU while a command runs: cores in use by kind of process, per
time window, for the command and every process under it.

    python scripts/cores_by_process.py [--every 0.5] [--window 8] -- python -m fedper.bench

Kinds: the command itself (`driver`), Flower's Ray actors (`actor`), Ray's own processes
(`ray`: GCS, raylet, agents, idle workers), and any other child by the name the benchmark's
memory sampler gives it (the plain loop's workers show as `python`). One line per window,
e.g. `16s actor=1.76 driver=0.08 ray=0.02`: with 2 cores, what the actors do not get went to
the others or to waiting.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from collections import defaultdict

from fedper.bench.sampling import RAY_HELPERS, process_name, process_tree

RAY_WORKER_STARTUP = ("setup_worker.py", "default_worker.py")  # before a worker takes a name


def kind(process, root: int) -> str:
    if process.pid == root:
        return "driver"
    name = process_name(process)
    if name.startswith("ray::ClientAppActor"):  # `.run` while it serves a client
        return "actor"
    ray = name in RAY_HELPERS or name in RAY_WORKER_STARTUP or name.startswith("ray::")
    return "ray" if ray else name


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
    start = time.monotonic()
    last: dict[int, float] = {}  # pid -> CPU seconds (user + system) at the previous sample
    used: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    while child.poll() is None:
        window = int((time.monotonic() - start) // args.window)
        now = {}
        try:
            processes = process_tree(child.pid)
        except Exception:
            break  # the command ended between the check and the listing
        for process in processes:
            try:
                now[process.pid] = sum(process.cpu_times()[:2])
                name = kind(process, child.pid)
            except Exception:
                continue  # a process that ended between listing and reading
            if process.pid in last:
                used[window][name] += now[process.pid] - last[process.pid]
        last = now
        # a fixed-rate sampler: the process is watched, not waited for
        time.sleep(args.every)
    child.wait()
    print(f"cores in use, by kind of process, per {args.window:g} s window:")
    for window in sorted(used):
        parts = sorted(used[window].items(), key=lambda item: -item[1])
        text = "  ".join(f"{name}={value / args.window:.2f}" for name, value in parts if value)
        print(f"{window * args.window:6.0f}s  {text}")
    raise SystemExit(child.returncode)


if __name__ == "__main__":
    main()
