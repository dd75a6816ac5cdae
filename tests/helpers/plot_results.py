"""Hand-written results.json files for the fedper.plot tests (no Ray, no training)."""

from __future__ import annotations

import json
from pathlib import Path


def config(algorithm: str, seed: int, **changes) -> dict:
    """A resolved config like fedper.main records; paths and devices differ between seeds."""
    cfg = {
        "algorithm": algorithm,
        "model_name": "mobile",
        "seed": seed,
        "num_rounds": 4,
        "num_clients": 4,
        "learning_rate": 0.01,
        "data_dir": f"/data/{seed}",
        "state_dir": f"/states/{seed}",
        "server_device": "cuda:0" if seed == 1 else "cpu",
        "client_resources": {"num_cpus": seed, "num_gpus": 0},
        "model": {"num_head_layers": 2, "width_multiplier": 0.25},
        "dataset": {"name": "digits", "num_classes": 4, "seed": seed, "mean": [0.5, 0.5, 0.5]},
    }
    cfg.update(changes)
    return cfg


def write_run(
    run_dir: Path,
    cfg: dict,
    accuracies: list[float | None],
    val_accuracies: list[float | None] | None = None,
    header: dict | None = None,
    **per_round: list,
) -> Path:
    """A results.json with one round per accuracy; val_accuracies and other keys per round.

    `header` adds top-level keys (e.g. code_version) to the file.
    """
    rounds = []
    for i, accuracy in enumerate(accuracies):
        entry = {"round": i + 1, "accuracy": accuracy, "loss": 1.0, "per_client": {}}
        if val_accuracies is not None:
            entry["val_accuracy"] = val_accuracies[i]
        entry.update({key: values[i] for key, values in per_round.items()})
        rounds.append(entry)
    run_dir.mkdir(parents=True)
    results = {"run_id": run_dir.name, "config": cfg, "partition": [], "rounds": rounds}
    results.update(header or {})
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir
