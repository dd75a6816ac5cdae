"""No file is read or written through a link: a symbolic link (or a hard link, a FIFO)
planted where fedper keeps its lock, run files or heads is refused in one line, and the file
it points to is left as it was."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from helpers import resume_run, start_run

from fedper.atomic import write_text_atomic
from fedper.errors import FedPerError, StorageError
from fedper.heads import DiskHeadStore, head_layout
from fedper.results import load_results
from fedper.rundir import RunDirError, RunLock

RUN_ID = "20240131-235959-0123abcd"
MINE = "my own notes\n"


@pytest.fixture
def users_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text(MINE)
    return path


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_kept(tmp_path, users_file):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".run.lock").symlink_to(users_file)
    with pytest.raises(RunDirError) as error:
        start_run(tmp_path)
    assert str(error.value) == (
        f"{run_dir / '.run.lock'} is a symbolic link (to {users_file}): fedper never reads or "
        "writes through a link; remove it, or choose another hydra.run.dir"
    )
    assert users_file.read_text() == MINE


@pytest.mark.parametrize("kind", ["hard link", "fifo"])
def test_a_lock_file_that_is_a_hard_link_or_a_fifo_is_refused(tmp_path, users_file, kind):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = run_dir / ".run.lock"
    if kind == "fifo":
        os.mkfifo(lock)
    else:
        os.link(users_file, lock)
    with pytest.raises(RunDirError, match=f"^{lock} is not a file of its own .*: remove it"):
        with RunLock(run_dir):
            pass
    assert users_file.read_text() == MINE


@pytest.mark.parametrize("name", ["results.json", "checkpoint.pt", "run_config.json"])
def test_a_run_file_replaced_by_a_symlink_is_refused_before_any_work(tmp_path, users_file, name):
    start_run(tmp_path, ["num_rounds=1"])
    run_dir = tmp_path / "run"
    (run_dir / name).unlink()
    (run_dir / name).symlink_to(users_file)
    with pytest.raises(RunDirError) as error:
        resume_run(run_dir, ["num_rounds=2"])
    assert str(error.value) == (
        f"{run_dir / name} is a symbolic link (to {users_file}): fedper never reads or writes "
        "through a link; remove it, or choose another hydra.run.dir"
    )
    assert users_file.read_text() == MINE and (run_dir / name).is_symlink()


def test_the_atomic_writer_refuses_a_symlinked_target_and_leaves_both_alone(tmp_path, users_file):
    link = tmp_path / "results.json"
    link.symlink_to(users_file)
    with pytest.raises(StorageError) as error:
        write_text_atomic(link, "{}")
    assert str(error.value) == (
        f"cannot write {link}: it is a symbolic link (to {users_file}), and fedper never writes "
        "through or over a link: remove it"
    )
    assert link.is_symlink() and users_file.read_text() == MINE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "results.json"]


def test_a_head_file_that_is_a_symlink_is_neither_read_nor_replaced(tmp_path):
    head = {"head.w": torch.ones(2)}
    store = DiskHeadStore(tmp_path / RUN_ID, RUN_ID, head_layout(head))
    store.save(0, 1, head)
    real = tmp_path / "elsewhere.pt"
    shutil.move(store.path(0), real)
    store.path(0).symlink_to(real)
    with pytest.raises(FedPerError, match=f"^{store.path(0)} is a symbolic link"):
        store.load_version(0, before_round=2)
    with pytest.raises(FedPerError, match="symbolic link"):
        store.save(0, 2, head)
    assert store.path(0).is_symlink()


def test_a_heads_folder_planted_as_a_symlink_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / RUN_ID).symlink_to(elsewhere)
    head = {"head.w": torch.ones(2)}
    store = DiskHeadStore(tmp_path / RUN_ID, RUN_ID, head_layout(head))
    with pytest.raises(FedPerError, match=f"^{tmp_path / RUN_ID} is a symbolic link"):
        store.save(0, 1, head)
    assert list(elsewhere.iterdir()) == []


def test_a_planted_heads_folder_stops_the_run_before_a_head_is_written(tmp_path):
    start_run(tmp_path, ["num_rounds=1"])
    run_dir = tmp_path / "run"
    heads = tmp_path / "states" / load_results(run_dir)["run_id"]
    moved = shutil.move(heads, tmp_path / "moved")
    heads.symlink_to(moved)
    before = {p.name: p.read_bytes() for p in moved.iterdir()}
    with pytest.raises(FedPerError, match=f"{heads} is a symbolic link"):
        resume_run(run_dir, ["num_rounds=2"])
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == before
    assert len(load_results(run_dir)["rounds"]) == 1
