"""The ClientApp's cold start measured from outside: fresh processes of
`fedper.bench.coldstart`, their parts, and which heavy modules fedper's path imports."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from fedper.algorithms import ALGORITHMS
from fedper.data import prepare_dataset
from fedper.errors import FedPerError
from fedper.models import build_model
from fedper.spec import RunSpec

# modules a client should not need; found in the import path, they are named with the chain
HEAVY_MODULES = ("pandas", "matplotlib", "sklearn", "scipy", "hydra", "PIL", "torchvision")
PYTHON_AND_FLOWER = ("interpreter_start", "flower_imports")
WORKER_PARTS = ("partition_from_cache", "partition_fingerprint", "model_build",
                "initial_model_digest")  # fmt: skip


def import_chains(importtime: str, wanted: tuple[str, ...] = HEAVY_MODULES) -> dict[str, dict]:
    """From `python -X importtime` output: each wanted module that was imported, with the
    chain of imports that led to it and its cumulative import seconds.

    Lines come children first, indented by depth; read backwards, a module's ancestors are
    the open entries of smaller depth.
    """
    entries = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _, cumulative, field = line.split("|", 2)
        name = field.strip()
        depth = (len(field) - len(field.lstrip(" ")) - 1) // 2
        entries.append((depth, name, int(cumulative)))
    found, stack = {}, []
    for depth, name, cumulative in reversed(entries):
        del stack[depth:]
        stack.append(name)
        if name in wanted and name not in found:
            found[name] = {"chain": list(stack), "seconds": cumulative / 1e6}
    return found


def run_once(request: Path, importtime: bool = False) -> dict:
    """One fresh ClientApp process; its parts, with the interpreter's own start added."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    args = [sys.executable, *(["-X", "importtime"] if importtime else []),
            "-m", "fedper.bench.coldstart", str(request)]  # fmt: skip
    spawned = time.time()
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    ended = time.time()
    if done.returncode != 0:
        raise FedPerError(f"the cold-start process failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["parts"]["interpreter_start"] = result.pop("started") - spawned
    result["process_seconds"] = ended - spawned
    if importtime:
        result["heavy_imports"] = import_chains(done.stderr)
        late = import_chains(done.stderr, tuple(result["imported_by_first_call"]))
        # only the imports the call made itself, not the ones nested in them
        result["first_call_imports"] = {
            name: found["seconds"] for name, found in late.items() if len(found["chain"]) == 1
        }
    return result


def split(run: dict) -> dict[str, float]:
    """One cold start as parts that add up to the process's first train reply; everything
    but Python, Flower, the message and the warm training itself is ours."""
    parts, first = run["parts"], run["calls"][0]
    worker = parts.get("worker_setup", 0.0)
    out = {
        key: parts.get(key, 0.0) for key in (*PYTHON_AND_FLOWER, "torch_import", "fedper_imports")
    }
    out["message_stand_in"] = first["message_seconds"]
    out.update({key: parts.get(key, 0.0) for key in WORKER_PARTS})
    out["worker_other"] = worker - sum(parts.get(key, 0.0) for key in WORKER_PARTS)
    phases = {key: first.get(f"seconds_{key}", 0.0) for key in ("data", "state", "compute")}
    out["client_data"], out["head_load_save"] = phases["data"], phases["state"]
    out["handler_other"] = first["handler_seconds"] - worker - sum(phases.values())
    # the first call's training takes longer than the same training warm (round 2, same
    # process): that extra is start-up (first kernels, allocator warm-up), the rest is the
    # training itself
    warm = min(run["calls"][1].get("seconds_compute", 0.0), phases["compute"])
    out["first_call_extra"] = phases["compute"] - warm
    out["train_compute_warm"] = warm
    return out


def measure_cold_start(spec: RunSpec, node_config: dict, folder: Path, repeats: int) -> dict:
    """Medians over `repeats` fresh processes (after one warm-up that also lists imports)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = spec.cfg
    prepare_dataset(cfg, node_config["data-dir"])  # the node-local cache, as after round 1
    shared = build_model(cfg, seed=cfg.seed).part_state(ALGORITHMS[cfg.algorithm].shared_parts)
    torch.save(shared, folder / "shared.pt")
    request = folder / "request.json"
    request.write_text(json.dumps({"spec": spec.to_json(), "node_config": node_config,
                                   "arrays": str(folder / "shared.pt")}))  # fmt: skip
    warm_up = run_once(request, importtime=True)
    runs = [run_once(request) for _ in range(repeats)]
    parts = {key: statistics.median(split(run)[key] for run in runs) for key in split(runs[0])}
    ours = sum(v for k, v in parts.items()
               if k not in (*PYTHON_AND_FLOWER, "message_stand_in", "train_compute_warm"))  # fmt: skip
    return {
        "parts": parts,
        "python_and_flower_seconds": sum(parts[k] for k in PYTHON_AND_FLOWER),
        "ours_seconds": ours,
        "first_train_call_seconds": statistics.median(
            r["calls"][0]["handler_seconds"] for r in runs
        ),
        "warm_train_call_seconds": statistics.median(
            r["calls"][1]["handler_seconds"] for r in runs
        ),
        # modules the first train call imported, and what importing them cost (warm-up run)
        "first_call_imports": warm_up["first_call_imports"],
        "process_seconds": statistics.median(r["process_seconds"] for r in runs),
        "heavy_imports": warm_up["heavy_imports"],
        "repeats": repeats,
    }
