"""A head file is bound to its owner: the run, the client and the model shape it was saved for.
A swapped, foreign or reshaped head is refused in one line naming the file and the way out."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import resume_run, start_run

from fedper.errors import FedPerError, StateFileError
from fedper.heads import DiskHeadStore, ForeignHeadError, head_layout
from fedper.results import load_results
from fedper.tensor_files import save_tensors

RUN_ID = "20240131-235959-0123abcd"
OTHER_RUN = "20240201-000000-89abcdef"
WAY_OUT = (
    "move it away and resume with restart_lost_heads=true to start this client over from its "
    "initial head, or start a fresh run"
)


def head(value: float) -> dict[str, torch.Tensor]:
    return {"head.w": torch.full((2, 2), value), "head.n": torch.tensor(3)}


def store_of(folder, run_id=RUN_ID) -> DiskHeadStore:
    return DiskHeadStore(folder, run_id, head_layout(head(0.0)))


def test_a_head_file_records_its_run_client_rounds_and_shapes(tmp_path):
    store = store_of(tmp_path)
    store.save(2, 1, head(1.0))
    store.save(2, 3, head(3.0))
    record = torch.load(store.path(2), weights_only=True)
    assert (record["run_id"], record["client"]) == (RUN_ID, 2)
    assert sorted(record["versions"]) == [1, 3]
    assert record["layout"] == {"head.n": "torch.int64[]", "head.w": "torch.float32[2, 2]"}
    assert store.load_version(2, before_round=9)[0] == 3


def test_another_clients_head_under_this_clients_name_is_refused(tmp_path):
    store = store_of(tmp_path)
    store.save(0, 1, head(1.0))
    shutil.copy(store.path(0), store.path(1))
    with pytest.raises(ForeignHeadError) as error:
        store.load_version(1, before_round=2)
    assert str(error.value) == (
        f"{store.path(1)} holds the head of client 0, not of client 1 (files swapped or copied "
        f"between clients): put the right file back, or {WAY_OUT}"
    )


def test_a_head_of_another_run_is_refused(tmp_path):
    theirs = store_of(tmp_path / OTHER_RUN, OTHER_RUN)
    theirs.save(0, 1, head(1.0))
    ours = store_of(tmp_path / RUN_ID)
    (tmp_path / RUN_ID).mkdir()
    shutil.copy(theirs.path(0), ours.path(0))
    with pytest.raises(ForeignHeadError) as error:
        ours.load_version(0, before_round=2)
    assert str(error.value) == (
        f"{ours.path(0)} holds a head of run {OTHER_RUN}, not of this run {RUN_ID} (copied from "
        f"another run's state_dir): put the right file back, or {WAY_OUT}"
    )


def test_a_head_of_another_model_shape_is_refused_naming_the_first_difference(tmp_path):
    wider = {**head(1.0), "head.w": torch.zeros(2, 3)}
    DiskHeadStore(tmp_path, RUN_ID, head_layout(wider)).save(0, 1, wider)
    with pytest.raises(ForeignHeadError, match=r"holds a head of another model \(head.w is "
                       r"torch.float32\[2, 3\] there, torch.float32\[2, 2\] here\)"):  # fmt: skip
        store_of(tmp_path).load_version(0, before_round=2)


def test_a_crafted_file_whose_tensors_differ_from_its_recorded_shapes_is_refused(tmp_path):
    store = store_of(tmp_path)
    payload = {"run_id": RUN_ID, "client": 0, "layout": head_layout(head(0.0)),
               "versions": {1: {"head.w": torch.zeros(5), "head.n": torch.tensor(3)}}}  # fmt: skip
    save_tensors(store.path(0), "head", payload)  # a valid checksum: anyone can compute one
    with pytest.raises(ForeignHeadError, match="version of round 1 does not match its recorded"):
        store.load_version(0, before_round=2)


def test_a_head_without_an_owner_is_refused(tmp_path):
    store = store_of(tmp_path)
    save_tensors(store.path(0), "head", {"versions": {1: head(1.0)}})
    with pytest.raises(StateFileError, match="records no run, client or shapes"):
        store.load_version(0, before_round=2)


def heads_of(root, run_dir):
    return root / "states" / load_results(run_dir)["run_id"]


def test_heads_swapped_between_rounds_stop_the_run_in_one_line(tmp_path):
    start_run(tmp_path, ["num_rounds=1"])
    run_dir, heads = tmp_path / "run", heads_of(tmp_path, tmp_path / "run")
    first, second = heads / "client_0.pt", heads / "client_1.pt"
    first_bytes = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(first_bytes)
    with pytest.raises(FedPerError) as error:
        resume_run(run_dir, ["num_rounds=2"])
    message = str(error.value)
    assert message.startswith(f"{heads}/client_") and "\n" not in message
    assert "holds the head of client " in message and message.endswith(WAY_OUT)
    assert len(load_results(run_dir)["rounds"]) == 1, "a round was committed with a wrong head"

    second.unlink()
    first.unlink()
    resumed = resume_run(run_dir, ["num_rounds=2", "restart_lost_heads=true"])
    assert resumed["rounds"][1]["restarted_heads"] == [0, 1]


def test_a_head_copied_from_another_run_stops_the_run(tmp_path):
    start_run(tmp_path, ["num_rounds=1"], run="theirs")
    start_run(tmp_path, ["num_rounds=1"], run="ours")
    ours = heads_of(tmp_path, tmp_path / "ours") / "client_2.pt"
    shutil.copy(heads_of(tmp_path, tmp_path / "theirs") / "client_2.pt", ours)
    theirs_id = load_results(tmp_path / "theirs")["run_id"]
    with pytest.raises(FedPerError, match=f"^{ours} holds a head of run {theirs_id}, not of "):
        resume_run(tmp_path / "ours", ["num_rounds=2"])
