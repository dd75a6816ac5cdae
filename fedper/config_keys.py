"""Which keys are fedper settings, and the nearest one to a key that is not (`did you mean`).

Torch-free, so that a command line with a misspelt key is refused before torch is imported
(fedper.preflight); fedper.validation runs the same check on every start.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedper import CONF_DIR
from fedper.errors import ConfigError

# sections a tool adds to its own preset and checks itself (fedper.bench: conf/bench.yaml)
TOOL_SECTIONS = ("bench",)
# groups whose files configure Hydra or a sweep, not a run
NOT_RUN_GROUPS = ("hydra", "figure")
GLOBAL_PACKAGE = "# @package _global_"
# names other tools use for a setting, which no spelling distance would find
ALIASES = {"lr": "learning_rate", "epochs": "num_epochs", "rounds": "num_rounds",
           "clients": "num_clients", "head_layers": "model.num_head_layers"}  # fmt: skip


@lru_cache(maxsize=64)
def _leaf_keys(path: Path) -> frozenset[str]:
    return frozenset(leaf_keys(OmegaConf.to_container(OmegaConf.load(path))))


def leaf_keys(tree, prefix: str = "") -> set[str]:
    """Dotted paths of a config's values ({"a": {"b": 1}} -> {"a.b"})."""
    if not isinstance(tree, dict) or not tree:
        return {prefix.rstrip(".")} if prefix else set()
    out: set[str] = set()
    for key, value in tree.items():
        if key != "defaults":
            out |= leaf_keys(value, f"{prefix}{key}.")
    return out


def known_keys(cfg: DictConfig) -> set[str]:
    """The keys conf/ defines: the presets' outside config groups, and in each group (dataset,
    engine, ...) those of the chosen option (all options' when the choice has no file)."""
    groups = [d for d in CONF_DIR.iterdir() if d.is_dir()]
    known: set[str] = set()
    for preset in CONF_DIR.glob("*.yaml"):
        known |= {k for k in _leaf_keys(preset) if k.split(".")[0] not in {g.name for g in groups}}
    for group in groups:
        chosen = cfg.get(group.name)
        name = chosen.get("name") if isinstance(chosen, DictConfig) else None
        options = [group / f"{name}.yaml"] if name else []
        if not any(o.is_file() for o in options):
            options = sorted(group.glob("*.yaml"))
        for option in options:
            keys = _leaf_keys(option)
            known |= {f"{group.name}.{key}" for key in keys} if keys else {group.name}
    return known


def check_known_keys(cfg: DictConfig) -> None:
    """`+key=value` with a key fedper does not know is a typo, not a setting."""
    given = leaf_keys(OmegaConf.to_container(cfg, resolve=False))
    known = known_keys(cfg)
    for key in sorted(given):
        if key in known or key.split(".")[0] in TOOL_SECTIONS:
            continue
        if any(key.startswith(f"{k}.") for k in known):  # a value set to a list or dict
            continue
        value = OmegaConf.select(cfg, key)
        raise ConfigError(unknown_key_message(key, None if value is None else str(value)))


@lru_cache(maxsize=1)
def every_key() -> frozenset[str]:
    """Every setting any file in conf/ defines, dotted."""
    keys: set[str] = set()
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        parts = path.relative_to(CONF_DIR).parts
        if parts[0] in NOT_RUN_GROUPS:
            continue
        is_global = len(parts) == 1 or path.read_text().startswith(GLOBAL_PACKAGE)
        prefix = "" if is_global else ".".join(parts[:-1]) + "."
        keys |= {f"{prefix}{key}" for key in _leaf_keys(path)}
    return frozenset(keys)


def unknown_key_message(key: str, value: str | None = None) -> str:
    """`num_round is not a fedper setting: did you mean num_rounds?`; a section given a value
    (`model=resnet`) gets the nearest setting with that value (`model_name=resnet`)."""
    keys = every_key()
    group, _, rest = key.partition(".")
    owners = [p.stem for p in sorted((CONF_DIR / group).glob("*.yaml")) if rest in _leaf_keys(p)]
    if rest and owners:
        chosen = ", ".join(f"{group}={o}" for o in owners)
        return f"{key} is not a setting of the chosen {group}: only {chosen} has it"
    section = any(k.startswith(f"{key}.") for k in keys)
    what = f"{key} is a section, not a setting" if section else f"{key} is not a fedper setting"
    close = ALIASES.get(key) or nearest_key(key, [k for k in keys if not k.startswith(f"{key}.")])
    hint = f": did you mean {close}{'' if value is None else f'={value}'}?" if close else ""
    return f"{what}{hint} (every setting: python -m fedper.main --help, or conf/base.yaml)"


def nearest_key(key: str, keys: Sequence[str]) -> str | None:
    """The key closest to `key` in full, else by its last part (`classes` -> dataset.num_classes)."""
    close = nearest(key, sorted(keys))
    if close is None:
        by_name = {k.rsplit(".", 1)[-1]: k for k in sorted(keys, reverse=True)}
        close = by_name.get(nearest(key.rsplit(".", 1)[-1], sorted(by_name)) or "")
    return close


def nearest(word: str, choices: Sequence[str]) -> str | None:
    """The choice closest to `word`, if one is close enough to be a misspelling of it."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None
