"""What Flower's Deployment Engine costs: the same small run on real SuperNodes and in the
simulation (per-round seconds of each, interleaved), a ClientApp's cold start split into
parts, and Flower's own polling intervals, read from the installed Flower."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedper import CONF_DIR
from fedper.atomic import write_text_atomic
from fedper.bench.local_federation import Federation
from fedper.bench.report import mean, round_cost, steady
from fedper.bench.settings import BENCH_JSON, TARGETS, BenchSettings
from fedper.bench.startup import measure_cold_start
from fedper.errors import ConfigError
from fedper.experiment import run_experiment
from fedper.planning import plan_run
from fedper.validation import validate_config

# where Flower waits between polls (functions whose `sleep(<seconds>)` calls are read)
FLOWER_SLEEPS = (
    ("flwr.supernode.start_client_internal", "start_client_internal",
     "a SuperNode without messages waits this long before asking the SuperLink again"),
    ("flwr.supernode.start_client_internal", "_push_messages",
     "a SuperNode checks this often whether its ClientApp process has replied"),
    ("flwr.supercore.app_utils", "start_parent_process_monitor",
     "app processes check this often that their parent still runs (not on the path)"),
)  # fmt: skip


# the waits every message meets (the parent-process monitor is not on its way)
ON_THE_WAY = ("flwr.supernode.start_client_internal.start_client_internal",
              "flwr.supernode.start_client_internal._push_messages",
              "flwr.supercore.superexec.run_superexec")  # fmt: skip


def sleeps_in(module: str, function: str) -> list[float]:
    """The constant seconds of every `sleep(...)` call in a function's source."""
    source = textwrap.dedent(inspect.getsource(getattr(importlib.import_module(module), function)))
    return sorted({
        node.args[0].value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
        and getattr(node.func, "attr", getattr(node.func, "id", None)) == "sleep"
    })  # fmt: skip


def flower_polling() -> list[dict]:
    """Flower's polling intervals on a message's way (Flower's, so reported, not changed)."""
    out = []
    for module, function, what in FLOWER_SLEEPS:
        try:
            seconds = sleeps_in(module, function)
        except (ImportError, AttributeError, OSError, TypeError):
            seconds = []  # another Flower version moved it
        out.append({"where": f"{module}.{function}", "seconds": seconds, "what": what})
    from flwr.supercore.superexec import run_superexec

    from fedper.bench.local_federation import SUPEREXEC_POLL_SECONDS

    out.append({
        "where": "flwr.supercore.superexec.run_superexec",
        "seconds": [float(SUPEREXEC_POLL_SECONDS)],
        "what": "a SuperExec asks for a task (a ClientApp or ServerApp process to start) this "
        "often: the benchmark's SuperNodes set FLWR_SUPEREXEC_TASK_POLL_INTERVAL, Flower's "
        f"default is {run_superexec._DEFAULT_TASK_POLL_INTERVAL_SECONDS:g} s",
    })  # fmt: skip
    from fedper.link import POLL_SECONDS

    out.append({"where": "fedper.link.POLL_SECONDS", "seconds": [POLL_SECONDS],
                "what": "the ServerApp checks for replies this often (fedper's own)"})  # fmt: skip
    return out


def with_engine(cfg: DictConfig, name: str, **values) -> DictConfig:
    """The config with its engine group switched, as `engine=<name> engine.<key>=...` would."""
    engine = OmegaConf.merge(OmegaConf.load(CONF_DIR / "engine" / f"{name}.yaml"),
                             values)  # fmt: skip
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out.engine = engine
    return out


# the simulation; the Deployment Engine with separate train and evaluate messages
# (engine.fold_evaluation=false); with evaluations folded into training (its default); and
# folded, with ClientApp processes forked warm by `fedper.engines.warm`
ENGINES = ("simulation", "deployment_separate", "deployment", "deployment_warm")
PATH = ("push", "to_handler", "handler", "back")  # a message's way (fedper.results.path_seconds)
# the cold start's parts that come before the handler's own clock: a fresh process's share
# of the way to the handler
PROCESS_START = ("torch_import", "fedper_imports", "partition_from_cache",
                 "partition_fingerprint", "model_build", "initial_model_digest", "worker_other")  # fmt: skip


def middle(values: list) -> list:
    """Rounds after the first (caches, processes) and before the last: with
    `engine.fold_evaluation` only the last round sends evaluate messages of its own, so the
    middle rounds are what every round of a long run costs."""
    return values[1:-1] if len(values) > 2 else steady(values)


def phase_split(rounds: list[dict]) -> dict[str, dict[str, float]]:
    """Middle rounds, per phase: its wall seconds, the seconds one client spent inside the
    ClientApp's handler (data, head, compute; its mean over clients), the rest (getting the
    message to a ready ClientApp and the reply back), and a message's way in parts. An
    evaluation folded into the next round's training messages is that phase's handler time
    (its evaluate phase then has no messages of its own)."""
    out = {}
    later = middle(rounds)
    for phase in ("train", "evaluate"):
        walls, insides = [], []
        for r in later:
            timing, folded = r["timing"], r["timing"].get("evaluation_folded", False)
            if phase == "train":  # a folded evaluation ran inside the training handlers
                parts = ["train_clients", "evaluate_clients"] if folded else ["train_clients"]
            else:
                parts = [] if folded else ["evaluate_clients"]
            count = len(r["trained_clients"]) if phase == "train" else r["clients_ok"]
            walls.append(timing[f"{phase}_wall"])
            insides.append(sum(sum(timing[p].values()) for p in parts) / max(count, 1))
        wall, inside = mean(walls), mean(insides)
        out[phase] = {"wall": wall, "inside_handler": inside, "outside_handler": wall - inside}
        out[phase] |= {part: mean([r["timing"][f"{phase}_path"].get(part, 0.0) for r in later])
                       for part in PATH}  # fmt: skip
    return out


def round_split(phases: dict, cold: dict | None, polling: list[dict]) -> dict[str, float]:
    """A later deployment round's seconds per message kind summed (train, evaluate), as
    compute (inside the handler), process start (the cold start's parts before the handler,
    measured in fresh processes; `cold=None` for warm processes, whose fork and re-import of
    fedper stay in the rest), polling (half of each of Flower's intervals on the way: the
    expected wait) and transfer with the rest (what is left of the way)."""
    waits = [p["seconds"][0] for p in polling if p["where"] in ON_THE_WAY and p["seconds"]]
    sent = [p for p in phases.values() if p["wall"] > 0]  # a folded evaluation sends none
    messages = len(sent)
    way = sum(p["push"] + p["to_handler"] + p["back"] for p in sent)
    process = 0.0
    if cold is not None:
        process = cold["python_and_flower_seconds"] + sum(cold["parts"][k] for k in PROCESS_START)
    split = {
        "compute": sum(p["handler"] for p in sent),
        "process_start": messages * process,
        "polling_expected": messages * sum(waits) / 2,
    }
    split["transfer_and_rest"] = way - split["process_start"] - split["polling_expected"]
    return split


def timed_run(cfg: DictConfig, run_dir: Path) -> dict:
    """One run through `run_experiment`, its wall seconds and per-round seconds."""
    started = time.perf_counter()
    results = run_experiment(cfg, run_dir)
    rounds = results["rounds"]
    return {
        "run_dir": str(run_dir),
        "wall_seconds": time.perf_counter() - started,
        "round_seconds": [round_cost(entry) for entry in rounds],
        "phases": phase_split(rounds),
        "per_client": [entry["per_client"] for entry in rounds],
    }


def engine_summary(runs: list[dict]) -> dict:
    """One engine's runs, averaged (round 1 apart: it builds caches and starts processes)."""
    return {
        "first_round_seconds": mean([run["round_seconds"][0] for run in runs]),
        "round_seconds_after_first": mean(
            [s for run in runs for s in middle(run["round_seconds"])]
        ),
        "wall_seconds": mean([run["wall_seconds"] for run in runs]),
        "phases": {
            phase: {key: mean([run["phases"][phase][key] for run in runs]) for key in parts}
            for phase, parts in runs[0]["phases"].items()
        },
        "runs": runs,
    }


def run_deployment_bench(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Cold start first (nothing else of ours running), then simulation and deployment runs
    in turn; writes bench.json."""
    validate_config(cfg)
    settings = BenchSettings.from_config(cfg)
    run_dir = Path(run_dir)
    if (run_dir / BENCH_JSON).exists():
        raise ConfigError(f"{run_dir} already holds a benchmark: give it a new hydra.run.dir")
    simulation = with_engine(cfg, "simulation")
    folder = run_dir / "cold_start"
    node_config = {"partition-id": 0, "num-partitions": cfg.num_clients,
                   "data-dir": str(folder / "node" / "data"),
                   "state-dir": str(folder / "node" / "states")}  # fmt: skip
    Path(node_config["data-dir"]).mkdir(parents=True, exist_ok=True)
    spec = plan_run(simulation, folder / "run").spec
    cold = measure_cold_start(spec, node_config, folder, settings.cold_starts)

    runs: dict[str, list[dict]] = {name: [] for name in ENGINES}
    with (
        Federation(run_dir / "federation", cfg.num_clients, settings.start_timeout) as fed,
        Federation(
            run_dir / "federation_warm", cfg.num_clients, settings.start_timeout, warm=True
        ) as warm,
    ):
        configs = {"simulation": simulation}
        for name, link, fold in (("deployment_separate", fed, False), ("deployment", fed, True),
                                 ("deployment_warm", warm, True)):  # fmt: skip
            configs[name] = with_engine(cfg, "deployment", superlink=link.superlink,
                                        insecure=True, fold_evaluation=fold)  # fmt: skip
        for repeat in range(1, settings.repeats + 1):
            for name in ENGINES:
                runs[name].append(timed_run(configs[name], run_dir / f"{name}-{repeat}"))
    engines = {name: engine_summary(engine_runs) for name, engine_runs in runs.items()}
    polling = flower_polling()
    middle_round = {name: part["round_seconds_after_first"] for name, part in engines.items()}
    report = {
        "scenario": {"dataset": cfg.dataset.name, "model": cfg.model_name,
                     "width_multiplier": cfg.model.get("width_multiplier"),
                     "num_clients": cfg.num_clients, "num_rounds": cfg.num_rounds,
                     "num_epochs": cfg.num_epochs, "batch_size": cfg.batch_size,
                     "repeats": settings.repeats},  # fmt: skip
        "engines": engines,
        "ratio_deployment_over_simulation": middle_round["deployment"] / middle_round["simulation"],
        "ratio_separate_over_simulation": middle_round["deployment_separate"]
        / middle_round["simulation"],
        "ratio_warm_over_simulation": middle_round["deployment_warm"] / middle_round["simulation"],
        "same_per_client_metrics": all(
            all(run["per_client"] == same[0]["per_client"] for run in same[1:])
            for same in zip(*(runs[name] for name in ENGINES), strict=True)
        ),
        "cold_start": cold,
        "flower_polling": polling,
        "deployment_round_split": round_split(engines["deployment"]["phases"], cold, polling),
        "separate_round_split": round_split(
            engines["deployment_separate"]["phases"], cold, polling
        ),
        "warm_round_split": round_split(engines["deployment_warm"]["phases"], None, polling),
        "targets": {"cold_start_seconds_max": TARGETS["cold_start_seconds_max"],
                    "cold_start_met": cold["ours_seconds"] <= TARGETS["cold_start_seconds_max"]},
        "settings": asdict(settings),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }  # fmt: skip
    write_text_atomic(run_dir / BENCH_JSON, json.dumps(report, indent=1))
    return report


def format_deployment(report: dict) -> str:
    """The Deployment Engine's cost on the console."""
    scen, engines, cold = report["scenario"], report["engines"], report["cold_start"]
    lines = [
        f"{scen['dataset']} · {scen['model']} x{scen['width_multiplier']}: {scen['num_clients']} "
        f"clients, {scen['num_rounds']} rounds of {scen['num_epochs']} epoch(s), batch "
        f"{scen['batch_size']}; {scen['repeats']} run(s) per engine, interleaved",
        "",
        f"{'engine':20}{'round 1 (s)':>12}{'middle rounds (s)':>19}{'run (s)':>10}",
    ]
    for name, part in engines.items():
        lines.append(f"{name:20}{part['first_round_seconds']:12.2f}"
                     f"{part['round_seconds_after_first']:19.2f}{part['wall_seconds']:10.1f}")  # fmt: skip
    lines.append("per phase, middle rounds (s): wall = inside the ClientApp's handler (one "
                 "client) + outside it (messaging; for deployment also polling, a fresh process, "
                 "imports and set-up)")  # fmt: skip
    for name, part in engines.items():
        lines.append(f"  {name:20}" + "; ".join(
            f"{phase} {p['wall']:.2f} = {p['inside_handler']:.2f} + {p['outside_handler']:.2f}"
            for phase, p in part["phases"].items()))  # fmt: skip
    for name, part in engines.items():
        lines.append(f"  {name:20}a message's way, mean over clients: " + "; ".join(
            f"{phase} " + " + ".join(f"{p[k]:.2f}" for k in PATH)
            for phase, p in part["phases"].items()) + " (push + to the handler + handler + back)")  # fmt: skip
    for name, key in (("separate", "separate_round_split"), ("folded", "deployment_round_split"),
                      ("folded, warm", "warm_round_split")):  # fmt: skip
        lines.append(f"deployment round ({name}), split (s): " + ", ".join(
            f"{part.replace('_', ' ')} {value:.2f}" for part, value in report[key].items()))  # fmt: skip
    lines += [
        f"deployment / simulation, middle rounds: {report['ratio_deployment_over_simulation']:.1f}x"
        f" (separate messages: {report['ratio_separate_over_simulation']:.1f}x; warm ClientApp "
        f"processes: {report['ratio_warm_over_simulation']:.1f}x); same per-client "
        f"metrics: {report['same_per_client_metrics']}",
        "",
        *cold_start_lines(cold, report["targets"]["cold_start_seconds_max"]),
        "",
        "polling on a message's way (s):",
    ]
    lines += [f"  {p['seconds']} {p['where']}: {p['what']}" for p in report["flower_polling"]]
    lines.append("timings come from a machine that may be shared: compare them within one run")
    return "\n".join(lines)


def cold_start_lines(cold: dict, target: float) -> list[str]:
    """A fresh ClientApp process: its parts, Flower's share and ours, and what it imported."""
    lines = [f"ClientApp cold start (median of {cold['repeats']} fresh processes, s):"]
    lines += [f"  {key:24}{value:8.3f}" for key, value in cold["parts"].items()]
    return lines + [
        f"  Python + Flower {cold['python_and_flower_seconds']:.2f} s; ours (torch, fedper, "
        f"data, model, head, handler, first-call extra; not the training itself) {cold['ours_seconds']:.2f} s "
        f"(target {target} s); first train call "
        f"{cold['first_train_call_seconds']:.2f} s, warm {cold['warm_train_call_seconds']:.2f} s",
        "  the first train call's extra over the same training warm: "
        f"{cold['parts']['first_call_extra']:.2f} s; it imported "
        + (
            ", ".join(
                f"{name} ({seconds:.2f} s)"
                for name, seconds in sorted(
                    cold["first_call_imports"].items(), key=lambda i: -i[1]
                )[:3]
            )
            or "nothing"
        ),  # fmt: skip
        "  heavy modules on the client's import path: "
        + (
            ", ".join(
                f"{name} ({' <- '.join(reversed(found['chain']))})"
                for name, found in cold["heavy_imports"].items()
            )
            or "none"
        ),  # fmt: skip
    ]
