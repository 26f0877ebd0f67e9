"""The registry of datasets, filled from the ``bench.datasets`` entry points (bench's own tables too).

An entry point names a :class:`~bench.data.dataset.DatasetDef` (its name must be the entry point's) or a
table of them (a list or tuple; the entry point's name is the table's). ``register_dataset`` adds one at run
time. Besides registered names, an entry may be own data: an existing folder, a ``.csv`` / ``.jsonl`` list,
or the canonical JSON of a suite-file dataset table (see :mod:`bench.data.own`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import BenchError
from ..units import NotAUnit, Registry
from . import own
from .dataset import DatasetDef
from .fewshot import fewshot_split


def _accept(name: str, value: str, found) -> list[tuple[str, DatasetDef]]:
    table = list(found) if isinstance(found, (list, tuple)) else [found]
    if not table or not all(isinstance(ds, DatasetDef) for ds in table):
        raise NotAUnit(f"{value} is not a bench DatasetDef or a list of them")
    if not isinstance(found, (list, tuple)) and found.name != name:
        raise NotAUnit(f"{value} is the dataset '{found.name}', not '{name}'")
    return [(ds.name, ds) for ds in table]


DATASETS: Registry[DatasetDef] = Registry("bench.datasets", "dataset", _accept)


def register_dataset(ds: DatasetDef) -> DatasetDef:
    return DATASETS.register(ds.name, ds)


def datasets() -> dict[str, DatasetDef]:
    return DATASETS.items()


def dataset_origin(name: str) -> str:
    """Where a registered dataset came from: the package and entry point, or run-time registration."""
    return DATASETS.origin(name)


def broken_dataset_plugins() -> dict[str, str]:
    return DATASETS.broken()


def get_dataset(entry: str) -> DatasetDef:
    """A registered dataset by name, or own data: a folder, a .csv/.jsonl list, a suite table's JSON."""
    found = DATASETS.find(entry)
    if found is not None:
        return found
    if own.is_own_entry(entry):
        return own.own_dataset(entry, taken=datasets())
    raise DATASETS.missing(entry, datasets(), "see `bench list datasets`, or give the path of an image folder or a "
                           ".csv/.jsonl list")


def canonical_entry(item: Any, base: Path | None = None) -> str:
    """What a trial stores for a dataset: a registered name as it is, own data as plain data that every
    worker resolves the same way (an absolute path, or the JSON of a suite-file table)."""
    if isinstance(item, dict):
        return own.table_entry(item, base)
    if not isinstance(item, str) or not item.strip():
        raise BenchError(f"a dataset is a name, a path or a table with 'path'; got {item!r}")
    item = item.strip()
    if item in datasets():
        return item
    if own.looks_like_path(item):
        return own.path_entry(item, base)
    get_dataset(item)  # unknown: fails with a suggestion
    return item


def check_data(dataset: DatasetDef, data_root: str | None) -> None:
    """Fail before any trial starts when a dataset or its split file is missing or unreadable."""
    dataset.preflight(Path(data_root).expanduser() if data_root else None)


def load_fewshot(entry: str, data_root: Path | None, shots: int, seed: int):
    """Read a dataset and draw the trial's few-shot train/val (Dassl's algorithm); test stays whole."""
    if shots <= 0:
        raise BenchError(f"shots must be a positive integer, got {shots}")
    full = get_dataset(entry).read(Path(data_root) if data_root else None)
    train, val, short = fewshot_split(full.train, full.val, shots, seed)
    return dataclasses.replace(full, train=train, val=val), short
