"""Client shifts: pure functions of the seed and client id, applied to every split, covered by
the partition fingerprint, shown in the partition summary; bad settings named in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import make_config

from fedper.data import load_client_data, prepare_dataset
from fedper.data.shift import MID_GRAY, ShiftSettings, client_groups, group_label_maps
from fedper.errors import ConfigError
from fedper.validation import validate_config

DIGITS = ["dataset=digits", "num_clients=8", "clients_per_round=8", "dataset.val_fraction=0.2"]
FEATURE = ["shift=feature", "shift.groups=4", "shift.rotations=[0,90,180,270]",
           "shift.contrasts=[1.0,-1.0,0.5,-0.5]"]  # fmt: skip


def digits(data_dir: Path, *overrides: str):
    cfg = make_config([*DIGITS, f"data_dir={data_dir}", *overrides])
    validate_config(cfg)
    return prepare_dataset(cfg)


def test_groups_are_balanced_and_a_pure_function_of_the_seed():
    first = client_groups(10, 3, seed=7)
    assert np.array_equal(first, client_groups(10, 3, seed=7))
    assert sorted(np.bincount(first).tolist()) == [3, 3, 4]
    assert any(not np.array_equal(first, client_groups(10, 3, seed=s)) for s in range(8, 12))


def test_label_maps_are_permutations_on_which_any_two_groups_disagree_everywhere():
    maps = group_label_maps(4, 10, seed=3)
    assert maps == group_label_maps(4, 10, seed=3)
    assert maps[0] == tuple(range(10))  # group 0 keeps the true labels
    for m in maps:
        assert sorted(m) == list(range(10))
    for g in range(4):
        for h in range(g + 1, 4):
            assert all(a != b for a, b in zip(maps[g], maps[h], strict=True))
    assert group_label_maps(4, 10, seed=4) != maps


def test_concept_shift_renames_every_split_with_its_groups_map(tmp_path: Path):
    plain = digits(tmp_path)
    shifted = digits(tmp_path, "shift=concept", "shift.groups=3")
    groups = set()
    for cid, (before, after) in enumerate(zip(plain.clients, shifted.clients, strict=True)):
        names = np.asarray(after.shift.label_map)
        groups.add(after.shift.group)
        for split in ("train", "val", "test"):
            rows = getattr(before, f"{split}_indices")
            assert np.array_equal(getattr(after, f"{split}_indices"), rows)  # same examples
            truth = getattr(before, f"{split}_labels")
            assert np.array_equal(getattr(after, f"{split}_labels"), names[truth])
        summary = shifted.summary()[cid]
        assert summary["shift"] == {"group": after.shift.group, "label_map": names.tolist()}
        assert summary["classes"] == plain.summary()[cid]["classes"]  # the pool's classes
    assert groups == {0, 1, 2}
    # the images are untouched by a concept shift
    assert np.array_equal(
        load_client_data(plain, 1).test_images.numpy(),
        load_client_data(shifted, 1).test_images.numpy(),
    )


def test_feature_shift_transforms_every_split_of_a_client_once(tmp_path: Path):
    plain = digits(tmp_path)
    shifted = digits(tmp_path, *FEATURE)
    seen = set()
    for cid, client in enumerate(shifted.clients):
        shift = client.shift
        seen.add((shift.rotation, shift.contrast))
        before, after = load_client_data(plain, cid), load_client_data(shifted, cid)
        for split in ("train", "val", "test"):
            original = getattr(before, f"{split}_images").numpy()
            assert len(original) > 0
            turned = np.rot90(original, k=int(shift.rotation) // 90, axes=(1, 2))
            expected = np.clip(np.rint(MID_GRAY + shift.contrast * (turned - MID_GRAY)), 0, 255)
            assert np.array_equal(getattr(after, f"{split}_images").numpy(), expected)
            # labels keep their meaning
            assert np.array_equal(
                getattr(after, f"{split}_labels"), getattr(before, f"{split}_labels")
            )
        assert shifted.summary()[cid]["shift"] == {
            "group": shift.group, "rotation": shift.rotation, "contrast": shift.contrast,
        }  # fmt: skip
    assert seen == {(0.0, 1.0), (90.0, -1.0), (180.0, 0.5), (270.0, -0.5)}


def test_a_rotation_off_the_grid_turns_the_digit(tmp_path: Path):
    dataset = digits(tmp_path, "shift=feature", "shift.groups=1", "shift.rotations=[45]",
                     "shift.contrasts=[1.0]")  # fmt: skip
    plain = load_client_data(digits(tmp_path), 0).train_images.numpy().astype(float)
    turned = load_client_data(dataset, 0).train_images.numpy().astype(float)
    assert turned.shape == plain.shape
    # ink moves: the images differ, but the total ink stays within a fifth
    assert np.abs(turned - plain).mean() > 5
    assert abs(turned.sum() / plain.sum() - 1) < 0.2


def test_every_node_derives_the_same_shifts_and_the_fingerprint_covers_them(tmp_path: Path):
    node_a, node_b = tmp_path / "a", tmp_path / "b"
    for overrides in (FEATURE, ["shift=concept"]):
        a, b = digits(node_a, *overrides), digits(node_b, *overrides)
        assert a.fingerprint() == b.fingerprint()
        assert a.summary() == b.summary()
    prints = {
        digits(node_a, *overrides).fingerprint()
        for overrides in (
            [],
            FEATURE,
            [*FEATURE, "shift.rotations=[0,90,180,90]"],
            [*FEATURE, "shift.contrasts=[1.0,-1.0,0.5,0.5]"],
            ["shift=concept"],
            ["shift=concept", "shift.groups=3"],
            ["shift=concept", "seed=43"],
        )
    }
    assert len(prints) == 7  # every shift setting names a different partition
    # no shift: the fingerprint is the one it was before shifts existed
    assert digits(node_a).fingerprint() == digits(node_a, "shift=none").fingerprint()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["shift=concept", "shift.groups=0"], "shift.groups=0 is out of range for shift=concept: use a whole number in 1-10 (at most dataset.total_classes=10)"),
        (["shift=concept", "shift.groups=11"], "shift.groups=11 is out of range for shift=concept: use a whole number in 1-10 (at most dataset.total_classes=10)"),
        (["shift=feature", "shift.groups=9"], "shift.groups=9 is out of range for shift=feature: use a whole number in 1-8 (at most num_clients=8)"),
        (["shift=feature", "shift.groups=2"], "shift.rotations=[0, 0, 0, 0] must be a list of 2 numbers, one per group (shift.groups=2)"),
        (["shift=feature", "shift.rotations=abc"], "shift.rotations=abc must be a list of 4 numbers, one per group (shift.groups=4)"),
        (["shift=feature", "shift.contrasts=[1,0,1,1]"], "shift.contrasts=[1.0, 0.0, 1.0, 1.0] has 0.0: use numbers in [-1, 1] other than 0 (1 = unchanged, -1 = inverted, 0.5 = half contrast)"),
        (["shift=feature", "shift.contrasts=[1,2,1,1]"], "shift.contrasts=[1.0, 2.0, 1.0, 1.0] has 2.0: use numbers in [-1, 1] other than 0 (1 = unchanged, -1 = inverted, 0.5 = half contrast)"),
        (["shift=concept", "+shift.rotations=[0]"], "shift.rotations is not a setting of the chosen shift: only shift=feature has it"),
    ],
)  # fmt: skip
def test_bad_shift_settings_are_named_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate_config(make_config([*DIGITS, *overrides]))
    assert str(error.value) == message


def test_shifts_do_not_apply_to_flickr_and_an_unknown_kind_is_named():
    with pytest.raises(ConfigError) as error:
        validate_config(make_config(["shift=concept"], config_name="flickr"))
    assert str(error.value) == (
        "shift=concept does not apply to dataset=flickr, whose raters already differ in what "
        "they like: use shift=none"
    )
    cfg = make_config(DIGITS)
    cfg.shift.name = "rotate"
    with pytest.raises(
        ConfigError, match="^shift=rotate is unknown: use one of none, feature, concept$"
    ):
        ShiftSettings.from_config(cfg)
