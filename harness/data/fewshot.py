"""Few-shot sampling identical to Dassl's ``generate_fewshot_dataset`` (what CoOp and R-AMT use).

With ``random.seed(seed)`` Dassl samples K items per label (labels in order of first appearance)
from the train list, then ``min(K, 4)`` per label from the val list with the same generator.
A class with fewer than K items is taken whole (Dassl ``repeat=False``).

One addition, which changes nothing for datasets whose train and val lists are disjoint (all the
CoOp split files): an image already picked for the K-shot train set is never a val candidate. That
lets a dataset without a validation split (ImageNet) offer its train list as ``val``: the train
picks stay exactly Dassl's and the few-shot val is drawn from the images left over.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence, TypeVar

T = TypeVar("T")


def _sample(rng: random.Random, items: Sequence[T], k: int, label_of) -> tuple[list[T], list[int]]:
    by_label: dict[int, list[T]] = defaultdict(list)  # insertion order = first appearance, as Dassl
    for item in items:
        by_label[label_of(item)].append(item)
    out: list[T] = []
    short: list[int] = []
    for label, group in by_label.items():
        if len(group) >= k:
            out.extend(rng.sample(group, k))
        else:
            out.extend(group)
            short.append(label)
    return out, short


def _identity(item) -> object:
    """Images are the same when their paths are; anything without a path only when it is the same object."""
    path = getattr(item, "path", None)
    return ("path", path) if path is not None else ("id", id(item))


def fewshot_split(train: Sequence[T], val: Sequence[T], shots: int, seed: int, label_of=lambda d: d.label):
    """Return (train_k, val_k, labels with fewer than K train items)."""
    rng = random.Random(seed)  # the same state as the global generator after random.seed(seed)
    train_k, short = _sample(rng, train, shots, label_of)
    picked = {_identity(d) for d in train_k}
    pool = [d for d in val if _identity(d) not in picked]
    val_k, _ = _sample(rng, pool, min(shots, 4), label_of)
    return train_k, val_k, short
