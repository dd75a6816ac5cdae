"""Controlled client shifts on top of label skew (`shift=none|feature|concept`, conf/shift/).

Clients are dealt at random (seeded) into `shift.groups` groups of near-equal size. Under a
feature shift each group sees its images under its own fixed transform (a rotation, then a
contrast change around mid-gray: -1 inverts), as in rotated-MNIST studies; under a concept
shift each group reads the labels through its own permutation, so no single classifier can
be right for every group. Everything is a pure function of the seed, the client id and the
settings: every node derives the same shifts, and the partition fingerprint covers them.
Labels are permuted when the partition is built; images are transformed once, when a
client's rows are loaded, for its training, validation and test rows alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from fedper.data.partition import is_number
from fedper.errors import ConfigError

SHIFTS = ("none", "feature", "concept")
MID_GRAY = 127.5  # contrast changes keep this level fixed: -1 maps 0 to 255 and back
GROUP_STREAM, LABEL_STREAM = 4, 5  # random streams of the seed (the partition uses 1-3)


@dataclass(frozen=True)
class ShiftSettings:
    """What the shifts depend on besides the client id, read and checked once from the config."""

    kind: str = "none"
    groups: int = 1
    seed: int = 0
    rotations: tuple[float, ...] = ()  # feature: degrees counter-clockwise, one per group
    contrasts: tuple[float, ...] = ()  # feature: one per group; 1 = unchanged, -1 = inverted

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ShiftSettings:
        """The settings of `cfg` (none when it has no `shift`), or a one-line ConfigError."""
        shift = cfg.get("shift") or {}
        kind = shift.get("name", "none")
        if kind not in SHIFTS:
            raise ConfigError(f"shift={kind} is unknown: use one of {', '.join(SHIFTS)}")
        if kind == "none":
            return cls()
        if cfg.dataset.name == "flickr":
            raise ConfigError(
                f"shift={kind} does not apply to dataset=flickr, whose raters already differ "
                "in what they like: use shift=none"
            )
        groups = shift.get("groups")
        high = int(cfg.dataset.total_classes) if kind == "concept" else int(cfg.num_clients)
        what = "dataset.total_classes" if kind == "concept" else "num_clients"
        if not (isinstance(groups, int) and not isinstance(groups, bool) and 1 <= groups <= high):
            raise ConfigError(
                f"shift.groups={groups} is out of range for shift={kind}: use a whole number "
                f"in 1-{high} (at most {what}={high})"
            )
        settings = cls(kind, groups, int(cfg.dataset.seed))
        if kind == "feature":
            rotations = per_group(shift, "rotations", groups)
            contrasts = per_group(shift, "contrasts", groups)
            bad = [c for c in contrasts if not -1 <= c <= 1 or c == 0]
            if bad:
                raise ConfigError(
                    f"shift.contrasts={list(contrasts)} has {bad[0]}: use numbers in [-1, 1] "
                    "other than 0 (1 = unchanged, -1 = inverted, 0.5 = half contrast)"
                )
            settings = cls(kind, groups, settings.seed, rotations, contrasts)
        return settings


def per_group(shift: DictConfig, key: str, groups: int) -> tuple[float, ...]:
    """`shift.<key>`: one number per group, or a one-line ConfigError."""
    values = shift.get(key)
    numbers = None if isinstance(values, (str, int, float)) or values is None else list(values)
    if numbers is None or len(numbers) != groups or not all(map(is_number, numbers)):
        raise ConfigError(
            f"shift.{key}={values} must be a list of {groups} numbers, one per group "
            f"(shift.groups={groups})"
        )
    return tuple(float(v) for v in numbers)


@dataclass(frozen=True)
class ClientShift:
    """One client's shift: its group and that group's image transform or label permutation."""

    group: int
    rotation: float = 0.0
    contrast: float = 1.0
    label_map: tuple[int, ...] | None = None  # concept: label_map[k] is what class k is called

    def summary(self) -> dict:
        """What results.json records (and the fingerprint covers) about this client's shift."""
        if self.label_map is not None:
            return {"group": self.group, "label_map": list(self.label_map)}
        return {"group": self.group, "rotation": self.rotation, "contrast": self.contrast}

    def labels(self, labels: np.ndarray) -> np.ndarray:
        if self.label_map is None:
            return labels
        return np.asarray(self.label_map, dtype=np.int64)[np.asarray(labels, dtype=np.int64)]

    def images(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC images rotated about their centre (black corners), then contrast-changed."""
        if self.rotation % 360:
            import torch
            from torchvision.transforms.v2 import InterpolationMode
            from torchvision.transforms.v2.functional import rotate

            nchw = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
            turned = rotate(nchw, self.rotation, InterpolationMode.BILINEAR, fill=0)
            images = turned.permute(0, 2, 3, 1).contiguous().numpy()
        if self.contrast != 1:
            changed = MID_GRAY + self.contrast * (images.astype(np.float32) - MID_GRAY)
            images = np.clip(np.rint(changed), 0, 255).astype(np.uint8)
        return images


def client_groups(num_clients: int, groups: int, seed: int) -> np.ndarray:
    """Each client's group: the clients in a seeded order, dealt round-robin (sizes differ by
    at most one)."""
    order = np.random.default_rng([seed, GROUP_STREAM]).permutation(num_clients)
    group = np.empty(num_clients, dtype=np.int64)
    group[order] = np.arange(num_clients) % groups
    return group


def group_label_maps(groups: int, total_classes: int, seed: int) -> list[tuple[int, ...]]:
    """Per group, the name of each class: group g calls a class the one g places after it in
    a seeded cyclic order of the classes. Group 0 keeps the true labels, and any two groups
    disagree on every class."""
    cycle = np.random.default_rng([seed, LABEL_STREAM]).permutation(total_classes)
    place = np.argsort(cycle)  # place[k]: where class k sits in the cycle
    return [tuple(int(c) for c in cycle[(place + g) % total_classes]) for g in range(groups)]


def client_shifts(
    settings: ShiftSettings, num_clients: int, total_classes: int
) -> list[ClientShift | None]:
    """Every client's shift (None for all under shift=none)."""
    if settings.kind == "none":
        return [None] * num_clients
    group = client_groups(num_clients, settings.groups, settings.seed)
    if settings.kind == "concept":
        maps = group_label_maps(settings.groups, total_classes, settings.seed)
        return [ClientShift(int(g), label_map=maps[g]) for g in group]
    return [ClientShift(int(g), settings.rotations[g], settings.contrasts[g]) for g in group]
