"""What one process running the client core holds privately, stage by stage: after importing
torch, after importing fedper's ClientApp module, with the client core built, and after each
client's training and each round's evaluation, as one worker of the benchmark serves them.

    python scripts/client_memory.py [--rounds 3] [--every 2] [Hydra overrides of conf/bench.yaml]

Private memory is the process's private dirty pages (`/proc/self/smaps_rollup`): what the
process wrote itself, which no other process shares. Libraries' clean pages are left out,
since a node's processes share them. The clients are those of the benchmark's scenario
(`conf/bench/default.yaml`); the worker serves every `--every`-th client, as one of two
actors does.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
from pathlib import Path


def private_dirty_mb() -> int:
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("/proc/self/smaps_rollup has no Private_Dirty line")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every", type=int, default=2, help="serve every k-th client")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    def show(stage: str) -> None:
        print(f"{stage:<28} {private_dirty_mb():>5} MB private", flush=True)

    show("python")
    import torch  # noqa: F401

    show("import torch")
    import fedper.client_app  # noqa: F401  what a client actor imports

    show("import fedper.client_app")
    from hydra import compose, initialize_config_dir

    from fedper import CONF_DIR
    from fedper.client import ClientWorker
    from fedper.heads import MemoryHeadStore
    from fedper.node import NodePaths
    from fedper.planning import plan_run

    with tempfile.TemporaryDirectory() as scratch:
        # data and state in the scratch folder, unless the overrides name folders
        folders = [f"data_dir={scratch}/datasets", f"state_dir={scratch}/client_states"]
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = compose("bench", overrides=folders + args.overrides)
        spec = plan_run(cfg, f"{scratch}/run").spec  # writes the run's data, as a start does
        show("config and data planned")
        paths = NodePaths(Path(spec.data_dir), Path(spec.state_dir))
        worker = ClientWorker(spec, paths, MemoryHeadStore())
        show("client core built")
        shared = worker.model.state_of(worker.shared_keys)
        mine = range(0, cfg.num_clients, args.every)
        for round_num in range(1, args.rounds + 1):
            for cid in mine:
                shared = worker.train(cid, round_num, shared).shared
            show(f"round {round_num}: trained {len(mine)}")
            for cid in mine:
                worker.evaluate(cid, round_num, shared)
            show(f"round {round_num}: evaluated {len(mine)}")
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        show("after malloc_trim(0)")


if __name__ == "__main__":
    main()
