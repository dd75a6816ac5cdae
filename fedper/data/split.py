"""Each client's examples split into train / validation / test: pure functions of a seeded rng.

Test is split off first (the paper's split); validation is then carved from the training
share with its own random stream, so adding it never moves an example into or out of test.
"""

from __future__ import annotations

import numpy as np


def split_train_test(
    indices: np.ndarray, labels: np.ndarray, train_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's examples into train and test, stratified by label.

    The public baseline splits each client's examples at random; splitting every class
    separately keeps each client's test split on the same class mix as its training split.
    """
    train, test = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for label in np.unique(labels):
        members = indices[labels == label]
        members = members[rng.permutation(len(members))]
        num_train = int(round(train_fraction * len(members)))
        if len(members) > 1:
            # keep at least one example of each class on each side when there are two
            num_train = min(max(num_train, 1), len(members) - 1)
        train.append(members[:num_train])
        test.append(members[num_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def stratified_test_counts(labels: np.ndarray, train_fraction: float) -> dict[int, int]:
    """Test examples wanted per class, by the rule of `split_train_test`."""
    counts = {}
    for label, size in zip(*np.unique(labels, return_counts=True), strict=True):
        num_train = int(round(train_fraction * size))
        if size > 1:
            num_train = min(max(num_train, 1), size - 1)
        counts[int(label)] = int(size - num_train)
    return counts


def validation_counts(labels: np.ndarray, fraction: float) -> dict[int, int]:
    """Validation examples wanted per class: `fraction` of the client's training examples.

    The total is rounded once for the client (at least 1 when fraction > 0 and there are two
    examples) and shared among classes by largest remainder, so a client of many small
    classes still gets its share; every class keeps at least one training example.
    """
    classes, sizes = np.unique(labels, return_counts=True)
    counts = np.zeros(len(classes), dtype=np.int64)
    if fraction > 0 and len(labels) >= 2:
        target = max(1, int(fraction * len(labels) + 0.5))
        caps = sizes - 1
        exact = fraction * sizes
        counts = np.minimum(np.floor(exact).astype(np.int64), caps)
        # extra slots go to the largest remainders, then the larger classes, then label order
        order = np.lexsort((classes, -sizes, -(exact - np.floor(exact))))
        while counts.sum() < target and bool((counts < caps).any()):
            for i in order:
                if counts.sum() < target and counts[i] < caps[i]:
                    counts[i] += 1
    return {int(c): int(n) for c, n in zip(classes, counts, strict=True)}


def split_shared(
    members: list[np.ndarray],
    labels: list[np.ndarray],
    wanted: list[dict[int, int]],
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Per client, a mask of the items that go to the held-out side (test or validation).

    `members[c]` are client c's items (distinct) with `labels[c]`; `wanted[c][label]` is how
    many of that class it should hold out. An item several clients hold (a FLICKR-AES photo
    rated by several workers) goes to the same side for all of them: it is decided first, in
    a seeded order, held out with the mean over its holders of the share each still needs
    (so every holder drifts toward its targets); the items only one client holds then fill
    each client's remaining quota per class exactly, where there are enough of them.
    """
    need = [dict(w) for w in wanted]
    left = [
        {int(k): int(v) for k, v in zip(*np.unique(lab, return_counts=True), strict=True)}
        for lab in labels
    ]
    masks = [np.zeros(len(m), dtype=bool) for m in members]
    everything = np.concatenate([np.asarray(m, np.int64) for m in members] or [np.empty(0)])
    items, holders = np.unique(everything, return_counts=True)
    shared = items[holders > 1]
    exclusive = [~np.isin(m, shared) for m in members]
    if len(shared):
        owners: dict[int, list[tuple[int, int]]] = {int(item): [] for item in shared}
        for c, mine in enumerate(members):
            for pos in np.flatnonzero(~exclusive[c]).tolist():
                owners[int(mine[pos])].append((c, pos))
        for item in shared[rng.permutation(len(shared))].tolist():
            holders_of = [(c, pos, int(labels[c][pos])) for c, pos in owners[item]]
            share = np.mean([min(max(need[c][k], 0) / left[c][k], 1.0) for c, _, k in holders_of])
            held_out = bool(rng.random() < share)
            for c, pos, k in holders_of:
                left[c][k] -= 1
                if held_out:
                    need[c][k] -= 1
                    masks[c][pos] = True
    for c in range(len(members)):
        for k in sorted(need[c]):
            free = np.flatnonzero(exclusive[c] & (labels[c] == k))
            free = free[rng.permutation(len(free))]
            masks[c][free[: max(need[c][k], 0)]] = True
    return masks


def validation_masks(
    train_indices: list[np.ndarray],
    train_labels: list[np.ndarray],
    fraction: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Per client, which of its training items become validation, stratified by class.

    Items shared between clients land on the same side for all of them (see split_shared).
    """
    wanted = [validation_counts(labels, fraction) for labels in train_labels]
    return split_shared(train_indices, train_labels, wanted, rng)


def split_with_shared_items(
    rows: list[np.ndarray],
    labels: list[np.ndarray],
    fraction: float,
    val_fraction: float,
    seed: int,
) -> list[dict[str, np.ndarray]]:
    """Each client's items (with their labels) -> masks of its train / val / test items.

    For items that several clients hold (FLICKR-AES photos rated by several workers): test
    first, with each client's per-class targets of `split_train_test`'s rule; then
    validation from the training items. Both steps keep a shared item on one side for all
    its holders (see split_shared); each step has its own random stream.
    """
    test = split_shared(rows, labels, [stratified_test_counts(k, fraction) for k in labels],
                        np.random.default_rng([seed, 1]))  # fmt: skip
    val = validation_masks(
        [r[~t] for r, t in zip(rows, test, strict=True)],
        [k[~t] for k, t in zip(labels, test, strict=True)],
        val_fraction,
        np.random.default_rng([seed, 2]),
    )
    splits = []
    for held_out, validation in zip(test, val, strict=True):
        in_val = np.zeros(len(held_out), dtype=bool)
        in_val[np.flatnonzero(~held_out)[validation]] = True
        splits.append({"train": ~held_out & ~in_val, "val": in_val, "test": held_out})
    return splits
