"""fedper.settings: the one list of keys that are not a setting, read by the run-folder claim,
the plots and the figure sweeps' folder names alike."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedper import CONF_DIR
from fedper.plot.runs import setting_from_config
from fedper.settings import (
    is_setting,
    not_setting_overrides,
    settings_only,
    with_current_names,
)


def test_where_a_run_runs_its_folders_and_its_recovery_are_not_settings():
    for key in ("engine.address", "performance.deterministic", "client_resources.num_gpus",
                "restart_lost_heads", "data_dir", "state_dir", "dataset.download", "resume"):  # fmt: skip
        assert not is_setting(key), key
    for key in ("algorithm", "dataset.name", "dataset.seed", "model.num_head_layers", "seed"):
        assert is_setting(key), key


def test_settings_only_drops_nested_keys_that_are_not_settings():
    config = {"seed": 1, "dataset": {"name": "digits", "download": True}, "engine": {"name": "ray"}}
    assert settings_only(config) == {"seed": 1, "dataset": {"name": "digits"}}


def test_the_sweep_folder_names_leave_out_every_key_of_every_engine_and_section():
    keys = set(not_setting_overrides())
    for option in (CONF_DIR / "engine").glob("*.yaml"):
        for key in OmegaConf.load(option):
            assert f"engine.{key}" in keys, (option.name, key)
    for key in ("performance.deterministic", "restart_lost_heads", "figure", "data_dir"):
        assert key in keys
    assert all(not is_setting(k) for k in keys if k != "figure")


def test_a_figure_config_excludes_exactly_that_list():
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("base", ["+figure=fig2_quick"], return_hydra_config=True)
    exclude = list(cfg.hydra.job.config.override_dirname.exclude_keys)
    assert exclude == not_setting_overrides()


def test_plots_group_runs_that_differ_only_in_keys_that_are_not_settings():
    a = {"algorithm": "fedper", "seed": 1, "performance": {"deterministic": True},
         "restart_lost_heads": False, "data_dir": "/a", "debug": {"fail_client": None}}  # fmt: skip
    b = {"algorithm": "fedper", "seed": 2, "performance": {"deterministic": False},
         "restart_lost_heads": True, "data_dir": "/b", "faults": {"fail_client": None}}  # fmt: skip
    assert setting_from_config(a) == setting_from_config(b)


def test_a_stored_debug_section_reads_as_faults_and_missing_keys_as_what_they_did():
    stored = {"debug": {"fail_client": 1}, "seed": 0}
    assert with_current_names(stored) == {
        # before clients could be held in a round: never held
        "faults": {"fail_client": 1, "hold_round": None, "hold_phase": "evaluate",
                   "hold_until": None, "hold_seconds_max": 600},
        "seed": 0,
        "evaluate_every": 1,  # before evaluation could be scheduled: every client, every round
        "clients_per_evaluation": None,
        "shift": {"name": "none"},  # before client shifts: label skew alone
    }  # fmt: skip
    assert stored == {"debug": {"fail_client": 1}, "seed": 0}  # read, not changed
    assert with_current_names({"shift": {"name": "feature"}})["shift"] == {"name": "feature"}
    first, second = with_current_names({}), with_current_names({})
    first["shift"]["name"] = "concept"
    assert second["shift"] == {"name": "none"}  # each reading gets a section of its own
    assert with_current_names({"evaluate_every": 5})["evaluate_every"] == 5
    assert with_current_names({"faults": {"hold_round": 2}})["faults"]["hold_round"] == 2
    assert "faults" not in with_current_names({"seed": 0})  # no section, nothing added to it
    # a stored performance section gets the row cache's size, which changes no result
    performance = with_current_names({"performance": {"deterministic": True}})["performance"]
    assert performance == {"deterministic": True, "client_data_cache_mb": 512}


def test_a_run_from_before_the_hold_keys_is_the_same_setting_as_one_with_them_off():
    """A run stored before faults.hold_* existed groups with today's runs of the same setting
    (the plots) and is continued by today's config (resume)."""
    today = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "faults" / "none.yaml"))
    before = {k: v for k, v in today.items() if not k.startswith("hold_")}
    assert before != today
    old = {"algorithm": "fedper", "seed": 1, "faults": before}
    new = {"algorithm": "fedper", "seed": 2, "faults": today}
    assert setting_from_config(old) == setting_from_config(new)
    held = {**new, "faults": {**today, "hold_round": 2}}
    assert setting_from_config(held) != setting_from_config(old)
