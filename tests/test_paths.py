"""Every folder a user names (hydra.run.dir, hydra.sweep.dir, data_dir, state_dir, resume):
a file, a dangling symlink, a symlink loop or a read-only folder there is one line naming the
key, never a traceback, and found before any data or Ray work where it can be."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import SMALL, TINY, make_config, run_main

from fedper.data import prepare_dataset
from fedper.errors import ConfigError, StorageError
from fedper.experiment import check_start, run_experiment


@pytest.fixture
def read_only(tmp_path):
    """A folder on a read-only file system (a read-only bind mount; root ignores permissions),
    or, for a user who may not mount, a folder without write permission; and the reason."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True
    )
    if mounted.returncode == 0:
        yield folder, "read-only file system"
        subprocess.run(["umount", str(folder)], check=True)
    elif os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder, "no write permission"
        folder.chmod(0o755)
    else:
        pytest.skip(f"root cannot mount here ({mounted.stderr.strip()}): nothing is read-only")


@pytest.fixture
def odd_paths(tmp_path):
    """A file, a dangling symlink and a symlink loop."""
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    return tmp_path


@pytest.mark.parametrize("key", ["data_dir", "state_dir"])
def test_a_folder_key_naming_a_dangling_symlink_or_a_loop_is_one_line(odd_paths, key):
    cases = {
        "dangling": f"{key}={odd_paths}/dangling is a symbolic link to {odd_paths}/nowhere, "
        "which does not exist: create that folder, or name another",
        "loop_a": f"{key}={odd_paths}/loop_a is a symbolic link loop: name a folder",
        "dangling/sub": f"{key}={odd_paths}/dangling/sub cannot be created ({odd_paths}/dangling "
        f"is a symbolic link to {odd_paths}/nowhere, which does not exist): name a folder you "
        "can write",
        "notes.txt/sub": f"{key}={odd_paths}/notes.txt/sub cannot be created ({odd_paths}/"
        "notes.txt is a file): name a folder you can write",
    }
    for name, message in cases.items():
        with pytest.raises(ConfigError) as error:
            check_start(make_config([f"{key}={odd_paths / name}"]))
        assert str(error.value) == message


def test_a_read_only_state_dir_is_refused_before_any_work(read_only):
    folder, reason = read_only
    with pytest.raises(ConfigError) as error:
        check_start(make_config([f"state_dir={folder}"]))
    assert str(error.value) == (
        f"state_dir={folder} is not writable ({reason}): name a folder you can write"
    )
    with pytest.raises(ConfigError, match=rf"state_dir={folder}/heads cannot be created \({folder} "
                       rf"is not writable \({reason}\)\): name a folder you can write"):  # fmt: skip
        check_start(make_config([f"state_dir={folder}/heads"]))


def test_a_read_only_data_dir_without_the_datasets_cache_is_one_line(read_only):
    """A read-only data_dir may hold a ready cache (a shared data mount): it is refused only
    when the cache must be written, in one line naming the file."""
    folder, _ = read_only
    cfg = make_config([*SMALL, f"data_dir={folder}"])
    check_start(cfg)
    with pytest.raises(StorageError, match=rf"^cannot write {folder}/digits/cache/\S+\.npy: "):
        prepare_dataset(cfg)


def test_resume_naming_a_loop_or_a_dangling_symlink_is_one_line(odd_paths):
    for name, message in [
        ("loop_a", f"resume={odd_paths}/loop_a is a symbolic link loop: name a run directory"),
        ("dangling", f"resume={odd_paths}/nowhere holds no fedper run (run_config.json is missing)"),
        ("notes.txt", f"resume={odd_paths}/notes.txt holds no fedper run (run_config.json is missing)"),
    ]:  # fmt: skip
        given = [f"resume={odd_paths / name}"]
        with pytest.raises(ConfigError) as error:
            run_experiment(make_config(given), odd_paths / "unused", given)
        assert str(error.value) == message


RUN = ["dataset=digits", *TINY, "num_rounds=1"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("notes.txt", "hydra.run.dir={root}/notes.txt is a file, not a folder: name a folder "
         "(created if missing)"),
        ("dangling", "hydra.run.dir={root}/dangling is a symbolic link to {root}/nowhere, which "
         "does not exist: create that folder, or name another"),
        ("loop_a", "hydra.run.dir={root}/loop_a is a symbolic link loop: name a folder"),
    ],
)  # fmt: skip
def test_a_run_folder_hydra_cannot_make_is_one_line_before_hydra_writes(odd_paths, name, line):
    result = run_main(odd_paths, RUN, odd_paths / name)
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"fedper: error: {line.format(root=odd_paths)}"]
    assert (odd_paths / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_a_read_only_run_folder_and_a_planted_hydra_log_are_one_line(read_only, tmp_path):
    folder, reason = read_only
    result = run_main(tmp_path, RUN, folder / "run")
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"fedper: error: hydra.run.dir={folder}/run cannot be created ({folder} is not writable "
        f"({reason})): name a folder you can write"
    ]
    run_dir, users = tmp_path / "run", tmp_path / "notes.txt"
    run_dir.mkdir()
    users.write_text("mine")
    (run_dir / "main.log").symlink_to(users)  # Hydra's log would append to the user's file
    result = run_main(tmp_path, RUN, run_dir)
    assert result.returncode == 2 and users.read_text() == "mine"
    assert result.stderr.splitlines() == [
        f"fedper: error: {run_dir}/main.log is a symbolic link (to {users}): fedper never "
        "reads or writes through a link; remove it, or choose another hydra.run.dir"
    ]


@pytest.mark.slow
def test_a_sweep_folder_naming_a_file_is_one_line(odd_paths):
    result = subprocess.run(
        [sys.executable, "-m", "fedper.main", "--multirun", *RUN, "seed=1,2",
         f"hydra.sweep.dir={odd_paths / 'notes.txt'}"],
        cwd=odd_paths, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"fedper: error: hydra.sweep.dir={odd_paths}/notes.txt is a file, not a folder: name a "
        "folder (created if missing)"
    ]
