"""`make demo`: FedPer and FedAvg on the offline digits dataset, printed side by side."""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir

from fedper.errors import FedPerError
from fedper.experiment import run_experiment

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
ALGORITHMS = ("fedper", "fedavg")


def demo_config(algorithm: str, overrides: list[str]):
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose(
            "base", overrides=["experiment=digits_demo", f"algorithm={algorithm}", *overrides]
        )


def side_by_side(results: dict[str, dict], seconds: dict[str, float]) -> str:
    """Accuracy per round for each algorithm, then the final numbers and wall time."""
    rounds = {name: r["rounds"] for name, r in results.items()}
    lines = ["round  " + "  ".join(f"{name:>8}" for name in results)]
    for i in range(max(len(r) for r in rounds.values())):
        cells = [f"{r[i]['accuracy']:8.3f}" if i < len(r) else " " * 8 for r in rounds.values()]
        lines.append(f"{i + 1:5d}  " + "  ".join(cells))
    lines.append("")
    lines.append("final  " + "  ".join(f"{r[-1]['accuracy']:8.3f}" for r in rounds.values()))
    lines.append("worst  " + "  ".join(f"{r[-1]['accuracy_min']:8.3f}" for r in rounds.values()))
    lines.append("secs   " + "  ".join(f"{seconds[name]:8.0f}" for name in results))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both algorithms with the digits_demo preset; extra arguments are Hydra overrides."""
    overrides = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path("outputs") / "demo" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}"
    results, seconds = {}, {}
    try:
        for algorithm in ALGORITHMS:
            started = time.perf_counter()
            results[algorithm] = run_experiment(demo_config(algorithm, overrides), out / algorithm)
            seconds[algorithm] = time.perf_counter() - started
    except FedPerError as error:
        print(f"fedper: error: {error}", file=sys.stderr)
        return 2
    print()
    print("Mean personalized test accuracy over 10 clients (digits, 4 classes per client)")
    print(side_by_side(results, seconds))
    print(f"\nresults: {out}/<algorithm>/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
