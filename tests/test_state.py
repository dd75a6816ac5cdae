"""Heads, state files, atomic writes and results.json on their own: versions, checksums, JSON."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from helpers import newest_head

import fedper.heads as heads_module
from fedper.atomic import write_text_atomic
from fedper.errors import StateFileError, StorageError
from fedper.heads import DiskHeadStore, MemoryHeadStore
from fedper.results import finite, results_json
from fedper.tensor_files import load_tensors, save_tensors

RUN_ID = "20240131-235959-0123abcd"


def head(value: float) -> dict[str, torch.Tensor]:
    return {"head.w": torch.full((2, 2), value), "head.n": torch.tensor(3)}


@pytest.mark.parametrize("store_kind", ["disk", "memory"])
def test_a_client_reads_the_newest_head_older_than_the_round_it_trains_in(tmp_path, store_kind):
    store = DiskHeadStore(tmp_path / "run", RUN_ID) if store_kind == "disk" else MemoryHeadStore()
    assert newest_head(store, 0, before_round=5) is None
    store.save(0, 1, head(1.0))
    store.save(0, 3, head(3.0))
    assert newest_head(store, 0, before_round=1) is None
    assert torch.equal(newest_head(store, 0, before_round=2)["head.w"], head(1.0)["head.w"])
    assert torch.equal(newest_head(store, 0, before_round=4)["head.w"], head(3.0)["head.w"])
    # a head written in a round that never completed (5) is not used to redo round 5
    store.save(0, 5, head(5.0))
    assert torch.equal(newest_head(store, 0, before_round=5)["head.w"], head(3.0)["head.w"])
    assert store.load_version(0, before_round=5)[0] == 3  # the round it was saved in
    assert store.load_version(0, before_round=6)[0] == 5
    assert newest_head(store, 1, before_round=9) is None  # each client only ever sees its own


def test_the_disk_store_keeps_the_latest_version_and_the_one_before(tmp_path):
    store = DiskHeadStore(tmp_path, RUN_ID)
    for round_num in (1, 2, 4, 7):
        store.save(3, round_num, head(float(round_num)))
    assert sorted(store.versions(3)) == [4, 7]
    assert store.versions(3)[4]["head.n"].dtype == torch.int64


def test_a_save_after_a_load_reuses_what_the_load_read_and_checked(tmp_path, monkeypatch):
    store = DiskHeadStore(tmp_path, RUN_ID)
    store.save(0, 1, head(1.0))
    store.save(0, 2, head(2.0))
    reads = []
    real = heads_module.load_tensors
    monkeypatch.setattr(heads_module, "load_tensors", lambda *a: reads.append(a) or real(*a))
    assert torch.equal(newest_head(store, 0, before_round=3)["head.w"], head(2.0)["head.w"])
    store.save(0, 3, head(3.0))
    assert len(reads) == 1, "the save read the file the load had just read again"
    assert sorted(store.versions(0)) == [2, 3]
    assert torch.equal(store.versions(0)[2]["head.w"], head(2.0)["head.w"])


def test_a_save_reads_again_when_another_writer_replaced_the_file_since_the_load(tmp_path):
    store, other = DiskHeadStore(tmp_path, RUN_ID), DiskHeadStore(tmp_path, RUN_ID)
    store.save(0, 1, head(1.0))
    newest_head(store, 0, before_round=2)
    other.save(0, 4, head(4.0))  # versions 1 and 4 on disk now
    store.save(0, 5, head(5.0))
    assert sorted(store.versions(0)) == [4, 5]  # from the file, not from what was loaded
    newest_head(store, 0, before_round=6)
    store.save(1, 6, head(6.0))  # another client: nothing of client 0 is carried over
    assert sorted(store.versions(1)) == [6]


def test_one_flipped_bit_in_a_state_files_values_is_caught(tmp_path):
    path = tmp_path / "x.pt"
    save_tensors(path, "head", {"versions": {1: head(1.0)}})
    assert torch.equal(
        load_tensors(path, "head", "way out")["versions"][1]["head.w"], head(1.0)["head.w"]
    )
    data = bytearray(path.read_bytes())
    at = data.index(torch.tensor(1.0).numpy().tobytes())  # inside a tensor's bytes
    data[at] ^= 0x01  # 1.0 becomes 1.0000001: torch.load alone would take it
    path.write_bytes(bytes(data))
    with pytest.raises(StateFileError, match=f"{path} is damaged .*: way out"):
        load_tensors(path, "head", "way out")
    with pytest.raises(StateFileError, match="is missing"):
        load_tensors(tmp_path / "none.pt", "head", "way out")


def test_atomic_writes_have_the_usual_permissions_and_leave_no_temporary_on_failure(tmp_path):
    write_text_atomic(tmp_path / "a.json", "{}")
    mode = stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not mkstemp's 0600: others may read results
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(StorageError, match="cannot write .*blocker/b.json"):
        write_text_atomic(tmp_path / "blocker" / "b.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "blocker"]


def test_what_could_not_be_measured_is_null_in_valid_json_at_any_depth():
    entry = {"accuracy": float("nan"), "per_client": {"0": {"val_accuracy": float("inf")}},
             "failures": [{"loss": float("-inf")}], "round": 1}  # fmt: skip
    assert finite(entry) == {"accuracy": None, "per_client": {"0": {"val_accuracy": None}},
                             "failures": [{"loss": None}], "round": 1}  # fmt: skip
    text = results_json({"rounds": [finite(entry)]})
    assert json.loads(text)["rounds"][0]["accuracy"] is None and "NaN" not in text
