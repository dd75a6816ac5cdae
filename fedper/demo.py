"""`make demo`: FedPer and FedAvg on the offline digits dataset, printed side by side."""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir

from fedper import CONF_DIR
from fedper.errors import FedPerError, exit_with_error
from fedper.main import check_settings, check_start
from fedper.preflight import check_overrides
from fedper.usage import render

ALGORITHMS = ("fedper", "fedavg")
PRESET = "digits_demo"


def demo_config(algorithm: str, overrides: list[str]):
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose(
            "base", overrides=[f"experiment={PRESET}", f"algorithm={algorithm}", *overrides]
        )


def side_by_side(results: dict[str, dict], seconds: dict[str, float], every: int = 5) -> str:
    """Test and validation accuracy per round for each algorithm, then the final numbers."""
    rounds = {name: r["rounds"] for name, r in results.items()}
    names = list(results)
    lines = [
        "round  " + "  ".join(f"{name + ' test':>12}{'val':>7}" for name in names),
    ]
    count = max(len(r) for r in rounds.values())
    for i in range(count):
        if (i + 1) % every and i not in (0, count - 1):
            continue
        cells = [
            f"{r[i]['accuracy']:12.3f}{cell(r[i].get('val_accuracy')):>7}"
            if i < len(r)
            else " " * 19
            for r in rounds.values()
        ]
        lines.append(f"{i + 1:5d}  " + "  ".join(cells))
    lines.append("")
    final = [
        f"{r[-1]['accuracy']:12.3f}{cell(r[-1].get('val_accuracy')):>7}" for r in rounds.values()
    ]
    lines.append("final  " + "  ".join(final))
    lines.append(
        "worst  " + "  ".join(f"{r[-1]['accuracy_min']:12.3f}{'':7}" for r in rounds.values())
    )
    lines.append("secs   " + "  ".join(f"{seconds[name]:12.0f}{'':7}" for name in names))
    return "\n".join(lines)


def cell(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    """Run both algorithms with the digits_demo preset; extra arguments are Hydra overrides."""
    overrides = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(overrides):
        rest = [o for o in overrides if o not in ("-h", "--help")]
        print(render("demo", demo_config(ALGORITHMS[0], rest)), end="")
        return 0
    try:  # a bad override is refused before torch is imported
        check_overrides(
            [f"experiment={PRESET}", *overrides], "base", False, (check_settings, check_start)
        )
    except FedPerError as error:
        exit_with_error("fedper.demo", error)
    from fedper.experiment import run_experiment

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path("outputs") / "demo" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}"
    results, seconds = {}, {}
    try:
        for algorithm in ALGORITHMS:
            started = time.perf_counter()
            results[algorithm] = run_experiment(demo_config(algorithm, overrides), out / algorithm)
            seconds[algorithm] = time.perf_counter() - started
    except FedPerError as error:
        exit_with_error("fedper", error)
    print()
    cfg = demo_config(ALGORITHMS[0], overrides)
    print(
        f"Mean personalized accuracy over {cfg.num_clients} clients on their test and "
        f"validation splits (digits, {cfg.dataset.num_classes} classes per client)"
    )
    print(side_by_side(results, seconds))
    print(f"\nresults: {out}/<algorithm>/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
