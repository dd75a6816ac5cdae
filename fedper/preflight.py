"""A command line checked before Hydra writes anything: a refused one leaves no folder behind.

`python -m fedper.main` and `python -m fedper.bench` call `check_command_line` first. It
composes the config the way Hydra will (each value of a `--multirun` sweep at least once), then
refuses, in one line: a key that is not a setting or a config group option that does not exist
(each with the nearest name: `num_round` -> `num_rounds`, `model=resnet` -> `model_name=resnet`),
`+figure=...` without `--multirun`, and every value the run's own checks would refuse. Only
the last step imports torch; a misspelt key is refused without it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from itertools import islice

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from fedper import CONF_DIR
from fedper.config_keys import check_known_keys, nearest, unknown_key_message
from fedper.errors import ConfigError, FedPerError

# groups that are not chosen on their own, and the sections a tool adds (fedper.bench)
HIDDEN_GROUPS = ("hydra", "faults", "figure/common", "figure/scale")
FIGURE_GROUP = "figure"
Check = Callable[[DictConfig], None]
MAX_SWEEP_CHECKS = 24  # compositions checked per multirun (each value of each sweep at least once)


def check_command_line(
    argv: Sequence[str],
    config_name: str,
    checks: Sequence[Check] = (),
    program: str = "fedper",
) -> None:
    """Refuse a bad command line in one line on stderr (exit status 2), before Hydra runs.

    `checks` are the program's own checks of a composed config, cheapest first (fedper.main:
    those that need no torch, then the start checks); they are skipped for `resume=`, whose
    settings are read from the run directory.
    """
    args, _ = get_args_parser().parse_known_args(list(argv))
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion:
        return  # Hydra answers these without running anything
    if args.config_path or args.config_dir or args.experimental_rerun:
        return  # configs from elsewhere: the run's own checks still come before any work
    try:
        check_overrides(args.overrides, args.config_name or config_name, args.multirun, checks)
    except FedPerError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        sys.exit(2)


def check_overrides(
    overrides: Sequence[str], config_name: str, multirun: bool, checks: Sequence[Check] = ()
) -> None:
    """Every check of `check_command_line`, raising ConfigError (tests call this)."""
    parsed = parse(overrides)
    figure = next((o for o in parsed if o.key_or_group == FIGURE_GROUP), None)
    if figure is not None and not multirun:
        text = figure.input_line
        raise ConfigError(
            f"{text} is a sweep of many runs: add --multirun (python -m fedper.main "
            f"--multirun {text}), or use bash run_figures.sh"
        )
    for override in parsed:
        check_group_option(override)
    configs = [composed(config_name, job) for job in islice(sweep_samples(parsed), MAX_SWEEP_CHECKS)]  # fmt: skip
    for cfg in configs:
        check_known_keys(cfg)
    for check in checks:  # each check on every config before the next, costlier one
        for cfg in configs:
            if cfg.get("resume") is None:
                check(cfg)


def parse(overrides: Sequence[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise ConfigError(first_line(error)) from None


def sweep_samples(parsed: list[Override]) -> Iterator[list[str]]:
    """Override lists that give every value of every sweep (`a=1,2`) at least once."""
    values = []
    for override in parsed:
        if override.is_sweep_override():
            prefix = override.get_key_element()
            try:
                values.append([f"{prefix}={v}" for v in override.sweep_string_iterator()])
            except HydraException:  # a glob over a group: Hydra's sweeper expands it
                continue
        else:
            values.append([override.input_line])
    count = max((len(v) for v in values), default=1)
    for i in range(count):
        yield [v[i % len(v)] for v in values]


def group_options(group: str) -> list[str]:
    """The options of a config group in conf/ (`dataset` -> cifar10, digits, ...)."""
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def check_group_option(override: Override) -> None:
    """`dataset=cifar` names no file in conf/dataset/: say which one was meant. Hydra's own
    groups (hydra/launcher=joblib, ...) also take options its plugins bring: Hydra checks them."""
    group = override.key_or_group
    options = group_options(group)
    if not options or group.startswith("hydra/") or override.is_delete() or override.is_sweep_override():  # fmt: skip
        return
    value = override.value()
    chosen = value if isinstance(value, list) else [value]  # logger=[csv,tensorboard]: several
    for option in chosen:
        if option is None or str(option) in options:
            continue
        shown = [o for o in options if f"{group}/{o}" not in HIDDEN_GROUPS]
        close = nearest(str(option), shown)
        hint = f" (did you mean {group}={close}?)" if close else ""
        raise ConfigError(f"{group}={option} is unknown: use one of {', '.join(shown)}{hint}")


def composed(config_name: str, overrides: list[str]) -> DictConfig:
    """The config Hydra will hand to the run, or a one-line ConfigError."""
    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            return compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        key = str(getattr(error, "full_key", "") or "") or missing_key(str(error), overrides)
        if key:
            raise ConfigError(unknown_key_message(key, value_of(key, overrides))) from None
        raise ConfigError(first_line(error)) from None


def missing_key(message: str, overrides: list[str]) -> str:
    """The override key Hydra could not set ("Could not override 'num_round'")."""
    for line in overrides:
        key = line.split("=", 1)[0].lstrip("+~")
        if f"'{key}'" in message and "override" in message:
            return key
    return ""


def value_of(key: str, overrides: list[str]) -> str | None:
    for line in overrides:
        name, _, value = line.partition("=")
        if name.lstrip("+~") == key:
            return value
    return None


def first_line(error: Exception) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
