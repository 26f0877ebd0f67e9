"""Few-shot sampling identical to Dassl's ``generate_fewshot_dataset`` (what CoOp and R-AMT use).

With ``random.seed(seed)`` Dassl samples K items per label (labels in order of first appearance)
from the train list, then ``min(K, 4)`` per label from the val list with the same generator.
A class with fewer than K items is taken whole (Dassl ``repeat=False``).
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence, TypeVar

T = TypeVar("T")


def _sample(rng: random.Random, items: Sequence[T], k: int, label_of) -> tuple[list[T], list[int]]:
    by_label: dict[int, list[T]] = defaultdict(list)
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


def fewshot_split(train: Sequence[T], val: Sequence[T], shots: int, seed: int, label_of=lambda d: d.label):
    """Return (train_k, val_k, labels with fewer than K train items)."""
    rng = random.Random(seed)
    train_k, short = _sample(rng, train, shots, label_of)
    val_k, _ = _sample(rng, val, min(shots, 4), label_of)
    return train_k, val_k, short
