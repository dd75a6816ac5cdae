"""What makes two runs the same run: a config's keys, less those that are not a setting.

Some keys say where and on what hardware a run runs, or how it recovers from lost heads, not
what it computes. A run continued (or resumed) with other values of them is the same run;
plots group runs that differ only in them, the seed and the folders as repeats of one setting
(a run that did restart a head says so in its rounds' `restarted_heads`).
"""

from __future__ import annotations

# sections a config of an earlier fedper version had under another name: old name -> new name
RENAMED_SECTIONS = {"debug": "faults"}
NOT_SETTING_KEYS = ("server_device", "client_device", "restart_lost_heads")
NOT_SETTING_SECTIONS = ("engine", "client_resources", "performance")


def is_setting(key: str) -> bool:
    """Whether `key` (dotted) changes what a run computes."""
    return key not in NOT_SETTING_KEYS and key.split(".", 1)[0] not in NOT_SETTING_SECTIONS


def with_current_names(config: dict) -> dict:
    """A stored config (run_config.json, results.json) with its sections under today's names,
    so that a run folder written before a rename is still the same run."""
    return {RENAMED_SECTIONS.get(key, key): value for key, value in config.items()}


def settings_only(config: dict) -> dict:
    """A run's resolved config without the keys that are not a setting."""
    return {key: value for key, value in config.items() if is_setting(key)}
