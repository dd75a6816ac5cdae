"""What `--help` says: the settings that matter, one line each with the value they have now, the
config groups and their options, the presets, and a few examples.

Hydra prints it (`hydra.help.template` in conf/hydra/help/, through the `fedper.help`
resolver registered here), so `--help` after overrides shows their values. Groups that only
tests or sweeps use (faults, figure/common, figure/scale) are not listed.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from fedper import CONF_DIR

HIDDEN = ("hydra", "faults", "figure/common", "figure/scale")
ALGORITHM_NAMES = "fedper | fedavg | fedavg_ft | local | fedrep | lg_fedavg | fedbn"

RUN_SETTINGS = {
    "algorithm": f"{ALGORITHM_NAMES} (docs/algorithms.md)",
    "model_name": "mobile (MobileNet-v1) | resnet (ResNet-34)",
    "model.num_head_layers": "personalization layers kept by each client: 1-4 (mobile), 1-3 (resnet)",
    "model.width_multiplier": "MobileNet-v1 channel multiplier (1.0 = the paper's network)",
    "dataset.num_classes": "classes each client holds (pathological partition)",
    "dataset.image_size": "images are resized to this many pixels a side",
    "num_clients": "clients in the federation",
    "clients_per_round": "clients sampled every round",
    "num_rounds": "federated rounds",
    "num_epochs": "local epochs per round",
    "batch_size": "local batch size",
    "learning_rate": "SGD learning rate (momentum: momentum, weight_decay)",
    "seed": "partition, client sampling, initial weights and shuffling",
    "min_successful_clients": "a round goes on with at least this many clients",
    "client_resources.num_cpus": "CPUs per client actor",
    "client_resources.num_gpus": "GPUs per client actor: auto | 0 | 0.5 | 1",
    "data_dir": "where datasets are read (and CIFAR-10 is downloaded to)",
    "state_dir": "where clients keep their heads",
    "resume": "a run directory to continue after its last completed round",
}
BENCH_SETTINGS = {
    "bench.plain_mode": "parallel (one process per client actor) | sequential",
    "bench.prep_repeats": "repeats of the timed data preparation",
    "bench.memory_interval": "seconds between memory samples",
    "bench.scale_clients": "bench=scale: the numbers of clients measured",
    "model_name": RUN_SETTINGS["model_name"],
    "num_rounds": "rounds of the federated run (the first is warm-up)",
    "num_clients": RUN_SETTINGS["num_clients"],
    "batch_size": RUN_SETTINGS["batch_size"],
    "dataset.image_size": RUN_SETTINGS["dataset.image_size"],
}


@dataclass(frozen=True)
class Program:
    usage: str
    about: str
    settings: dict[str, str]
    presets: tuple[str, ...]
    examples: tuple[str, ...]
    hidden: tuple[str, ...] = HIDDEN


PROGRAMS = {
    "main": Program(
        usage="python -m fedper.main [--config-name PRESET] [--multirun] [key=value ...]",
        about="Runs one federated experiment (or a sweep with --multirun) and writes "
        "results.json, .csv and .png into its run directory.",
        settings=RUN_SETTINGS,
        presets=("base", "cifar10", "flickr"),
        examples=(
            "python -m fedper.main dataset=digits num_rounds=5      # offline, a minute",
            "python -m fedper.main --config-name cifar10 algorithm=fedavg logger=tensorboard",
            "python -m fedper.main --multirun +figure=fig2_quick    # a figure's sweep",
            "python -m fedper.main resume=outputs/2024-05-01/12-00-00",
        ),
        hidden=(*HIDDEN, "bench"),
    ),
    "bench": Program(
        usage="python -m fedper.bench [bench=default|gpu|deployment|scale] [key=value ...]",
        about="Times a federated run against a plain training loop on the same clients, with "
        "memory and data preparation, and prints a table (docs/performance.md).",
        settings=BENCH_SETTINGS,
        presets=("bench",),
        examples=(
            "python -m fedper.bench                       # the default scenario",
            "python -m fedper.bench model_name=resnet num_rounds=3",
            "python -m fedper.bench bench=gpu             # the GPU check (make gpu-check)",
            "python -m fedper.bench bench=scale           # 10 to 10,000 clients",
        ),
        hidden=(*HIDDEN, "figure", "experiment"),
    ),
    "demo": Program(
        usage="python -m fedper.demo [key=value ...]   (make demo)",
        about="FedPer and FedAvg on the offline digits dataset (the digits_demo preset), "
        "printed side by side.",
        settings=RUN_SETTINGS,
        presets=("base + experiment=digits_demo",),
        examples=("python -m fedper.demo num_rounds=10 seed=1",),
        hidden=(*HIDDEN, "bench", "figure"),
    ),
}


def groups(hidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Config group -> its options, for the groups a user chooses from."""
    found = {}
    for folder in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir()):
        group = folder.relative_to(CONF_DIR).as_posix()
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options and not any(group == h or group.startswith(f"{h}/") for h in hidden):
            found[group] = options
    return found


def value_of(cfg: DictConfig | None, key: str) -> str:
    if cfg is None:
        return ""
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
    except Exception:  # an interpolation that cannot be resolved here
        return "?"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def render(name: str, cfg: DictConfig | None = None) -> str:
    """The help text of program `name`, with the values `cfg` gives each setting."""
    program = PROGRAMS[name]
    about = textwrap.fill(program.about, 96)
    lines = [f"usage: {program.usage}", "", about, "", "Settings (key=value; now):"]
    width = max(len(k) for k in program.settings) + 2
    values = {key: value_of(cfg, key) for key in program.settings}
    value_width = max(len(v) for v in values.values()) + 2
    for key, about in program.settings.items():
        lines.append(f"  {key:<{width}}{values[key]:<{value_width}}{about}")
    lines += ["", "Config groups (group=option):"]
    for group, options in groups(program.hidden).items():
        label = "+figure (with --multirun)" if group == "figure" else group
        lines.append(f"  {label:<{width}}{', '.join(options)}")
    presets = ", ".join(program.presets)
    lines += ["", f"Presets (--config-name): {presets}", "", "Examples:"]
    lines += [f"  {example}" for example in program.examples]
    lines += [
        "",
        "Every key: docs/configuration.md and conf/; show the composed config: --cfg job;",
        "Hydra's own flags: --hydra-help.",
    ]
    return "\n".join(lines).replace("$", "$$") + "\n"


def _help(name: str, *, _root_: DictConfig) -> str:
    return render(name, _root_)


OmegaConf.register_new_resolver("fedper.help", _help, replace=True)
