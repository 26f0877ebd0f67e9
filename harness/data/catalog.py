"""The registry of datasets, filled from the ``bench.datasets`` entry points (bench's own tables too).

An entry point names a :class:`~bench.data.dataset.DatasetDef` (its name must be the entry point's) or a
table of them (a list or tuple; the entry point's name is the table's). ``register_dataset`` adds one at run
time. Besides registered names, an entry may be own data: an existing folder, a ``.csv`` / ``.jsonl`` list,
or the canonical JSON of a suite-file dataset table (see :mod:`bench.data.own`).
"""
from __future__ import annotations

import dataclasses
import functools
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ..errors import BenchError
from .dataset import DatasetDef
from .fewshot import fewshot_split

GROUP = "bench.datasets"
RUN_TIME = "registered at run time"


@functools.cache
def _discover() -> tuple[dict[str, DatasetDef], dict[str, str], dict[str, str]]:
    """(datasets, where each came from, plugins that failed to load with the reason)."""
    found: dict[str, DatasetDef] = {}
    origin: dict[str, str] = {}
    broken: dict[str, str] = {}
    own_first = sorted(entry_points(group=GROUP), key=lambda ep: ep.dist is None or ep.dist.name != "bench")
    for ep in own_first:  # bench's own tables first: a plugin never shadows a built-in name
        package = ep.dist.name if ep.dist is not None else "?"
        try:
            value = ep.load()
        except Exception as err:  # a broken third-party plugin must not take bench down
            broken[ep.name] = f"{type(err).__name__}: {err}"
            continue
        table = list(value) if isinstance(value, (list, tuple)) else [value]
        if not table or not all(isinstance(ds, DatasetDef) for ds in table):
            broken[ep.name] = f"{ep.value} is not a bench DatasetDef or a list of them"
            continue
        if not isinstance(value, (list, tuple)) and value.name != ep.name:
            broken[ep.name] = f"{ep.value} is the dataset '{value.name}', not '{ep.name}'"
            continue
        for ds in table:
            if ds.name in found:
                broken[ds.name] = f"name claimed twice: by {origin[ds.name]} and by {package} ({ep.name})"
                continue
            found[ds.name] = ds
            origin[ds.name] = f"{package} ({ep.name})" if ep.name != ds.name else package
    return found, origin, broken


_RUN_TIME: dict[str, DatasetDef] = {}


def register_dataset(ds: DatasetDef) -> DatasetDef:
    if ds.name in _RUN_TIME or ds.name in _discover()[0]:
        raise ValueError(f"dataset '{ds.name}' registered twice")
    _RUN_TIME[ds.name] = ds
    return ds


def datasets() -> dict[str, DatasetDef]:
    return {**_discover()[0], **_RUN_TIME}


def dataset_origin(name: str) -> str:
    """Where a registered dataset came from: the package and entry point, or run-time registration."""
    return RUN_TIME if name in _RUN_TIME else _discover()[1][name]


def broken_dataset_plugins() -> dict[str, str]:
    return dict(_discover()[2])


def get_dataset(entry: str) -> DatasetDef:
    """A registered dataset by name, or own data: a folder, a .csv/.jsonl list, a suite table's JSON."""
    table = datasets()
    if entry in table:
        return table[entry]
    from . import own

    if own.is_own_entry(entry):
        return own.own_dataset(entry)
    broken = _discover()[2]
    if entry in broken:
        raise BenchError(f"dataset plugin '{entry}' failed to load ({broken[entry]}); reinstall or fix that package")
    from ..registry import suggest

    raise BenchError(f"unknown dataset '{entry}'{suggest(entry, table)}; see `bench list datasets`, or give the "
                     "path of an image folder or a .csv/.jsonl list")


def canonical_entry(item: Any, base: Path | None = None) -> str:
    """What a trial stores for a dataset: a registered name as it is, own data as plain data that every
    worker resolves the same way (an absolute path, or the JSON of a suite-file table)."""
    from . import own

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
