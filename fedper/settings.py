"""What makes two runs the same run: a config's keys, less those that are not a setting.

Some keys say where and on what hardware a run runs (the engine, devices, resources, the
performance switches), where its files live (`data_dir`, `state_dir`: the partition
fingerprint already proves the data is the same), how it recovers (`restart_lost_heads`,
`resume`), where it is tracked (`logger`) or where its data comes from (`dataset.download`),
not what it computes. A run continued with other values of them is the same run. This list is
the only one: the run-folder claim and `resume` (fedper.planning), the plots' grouping
(fedper.plot) and the figure sweeps' folder names (conf/figure/common/sweep.yaml, through the
`fedper.not_settings` resolver) all read it.
"""

from __future__ import annotations

import copy
from functools import lru_cache

from omegaconf import OmegaConf

from fedper import CONF_DIR

# sections a config of an earlier fedper version had under another name: old name -> new name
RENAMED_SECTIONS = {"debug": "faults"}
# keys a config of an earlier fedper version lacks, with the value that does what it did; a
# dotted key is added to its section when the config has that section
ADDED_KEYS = {
    "evaluate_every": 1,
    "clients_per_evaluation": None,
    "faults.hold_round": None,  # before clients could be held in a round: never held
    "faults.hold_phase": "evaluate",
    "faults.hold_until": None,
    "faults.hold_seconds_max": 600,
    "shift": {"name": "none"},  # before client shifts: the partition's label skew alone
    # no size cap before it; a resumed run takes the default, which changes memory, not results
    "performance.client_data_cache_mb": 512,
}
# single keys (dotted), and sections whose every key is not a setting
NOT_SETTING_KEYS = (
    "server_device",
    "client_device",
    "data_dir",
    "state_dir",
    "resume",
    "restart_lost_heads",
    "dataset.download",
)
NOT_SETTING_SECTIONS = ("engine", "client_resources", "performance", "logger")
# what the figure sweeps' folder names leave out besides: the figure's own name
SWEEP_ONLY_KEYS = ("figure",)


def is_setting(key: str) -> bool:
    """Whether `key` (dotted) changes what a run computes."""
    return key not in NOT_SETTING_KEYS and key.split(".", 1)[0] not in NOT_SETTING_SECTIONS


def with_current_names(config: dict) -> dict:
    """A stored config (run_config.json, results.json) with its sections under today's names
    and the keys added since, so that a run folder written before is still the same run."""
    current = {RENAMED_SECTIONS.get(key, key): value for key, value in config.items()}
    for dotted, value in ADDED_KEYS.items():
        section, _, key = dotted.rpartition(".")
        if not section:
            current.setdefault(key, copy.deepcopy(value))
        elif isinstance(current.get(section), dict):
            current[section] = {**current[section]}  # the stored config stays as it was
            current[section].setdefault(key, value)
    return current


def settings_only(config: dict, prefix: str = "") -> dict:
    """A run's resolved config without the keys that are not a setting."""
    return {
        key: settings_only(value, f"{prefix}{key}.") if isinstance(value, dict) else value
        for key, value in config.items()
        if is_setting(f"{prefix}{key}")
    }


@lru_cache(maxsize=1)
def not_setting_overrides() -> list[str]:
    """Every override key that is not a setting, as Hydra's `override_dirname.exclude_keys`
    needs them (exact keys): the single keys, each section and every key conf/ gives it."""
    keys = [*SWEEP_ONLY_KEYS, *NOT_SETTING_KEYS, *NOT_SETTING_SECTIONS]
    base = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "base.yaml"))
    for section in NOT_SETTING_SECTIONS:
        options = sorted((CONF_DIR / section).glob("*.yaml"))
        trees = [OmegaConf.to_container(OmegaConf.load(o)) for o in options]
        trees += [base.get(section) or {}]
        keys += sorted({f"{section}.{key}" for tree in trees for key in tree if key != "defaults"})
    return list(dict.fromkeys(keys))


OmegaConf.register_new_resolver(
    "fedper.not_settings", lambda: list(not_setting_overrides()), replace=True
)
