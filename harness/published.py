"""Published numbers as data (``bench/reference/published.csv``, shipped in the package) and a side-by-side with a run's table.

The CSV is a transcription of the public tables listed in ``bench/reference/README.md``: one row per
(source, table, method, dataset, shots, backbone) with top-1 in percent, the published ± where there is
one, and a note with the caveats (e.g. "probably RN50", "probably Tip-Adapter-F"). Methods carry bench's
stack names (``mask`` = R-AMT, ``coop+mask`` = CoOp+R-AMT, ...); methods bench does not have keep a
lower-case name of their own (``amt``, ``prograd``, ...). Datasets carry bench's names; a table's printed
Average is the dataset ``average``. ``shots`` 0 marks a zero-shot number that holds for every K.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

from .errors import BenchError

COLUMNS = ["source", "table", "method", "dataset", "shots", "backbone", "top1", "std", "note"]

# When several sources publish the same cell, the first of these wins.
SOURCE_PRIORITY = ["R-AMT README", "R-AMT project page figure", "Tip-Adapter exp.log", "APE notebook",
                   "third-party plotting script"]

# Names a run's table may use for its mean column.
AVERAGE_NAMES = ("average", "Average", "mean", "Mean", "avg")

_BACKBONE_ALIASES = {"vit-b/16": "ViT-B-16", "vit-b-16": "ViT-B-16", "vit-b-16-quickgelu": "ViT-B-16",
                     "rn50": "RN50", "rn50-quickgelu": "RN50", "vit-b/32": "ViT-B-32", "vit-b-32": "ViT-B-32"}


def csv_path() -> Path:
    """The CSV shipped as package data (``bench/reference/published.csv``)."""
    here = Path(__file__).resolve().parent / "reference" / "published.csv"
    if here.is_file():
        return here
    raise BenchError(f"published numbers not found at {here}; reinstall bench (the file is part of the package)")


@functools.cache
def _load(path: str) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"source": str, "table": str, "method": str, "dataset": str, "backbone": str,
                                  "note": str}, keep_default_na=False, na_values={"std": [""]})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise BenchError(f"{path} lacks columns {missing}; restore it from the repository")
    df["shots"] = df["shots"].astype(int)
    df["top1"] = df["top1"].astype(float)
    df["std"] = pd.to_numeric(df["std"], errors="coerce")
    return df[COLUMNS]


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """All published numbers, one row per cell (a fresh copy, safe to modify)."""
    return _load(str(path or csv_path())).copy()


def normalise_backbone(name: str) -> str:
    return _BACKBONE_ALIASES.get(name.lower(), name)


def published_cells(shots: int, backbone: str, source: str | None = None,
                    published: pd.DataFrame | None = None) -> pd.DataFrame:
    """One published row per (method, dataset) for these shots and backbone, by source priority."""
    df = load_published() if published is None else published
    df = df[(df.backbone == normalise_backbone(backbone)) & ((df.shots == shots) | (df.shots == 0))]
    if source is not None:
        if source not in set(df.source) | set(SOURCE_PRIORITY):
            raise BenchError(f"unknown source '{source}'; sources: {', '.join(SOURCE_PRIORITY)}")
        df = df[df.source == source]
    rank = {s: i for i, s in enumerate(SOURCE_PRIORITY)}
    df = df.assign(_rank=df.source.map(lambda s: rank.get(s, len(rank))), _exact=(df.shots != shots))
    df = df.sort_values(["_exact", "_rank"], kind="stable").drop_duplicates(["method", "dataset"])
    return df.drop(columns=["_rank", "_exact"]).reset_index(drop=True)


def compare(table: pd.DataFrame, shots: int, backbone: str, source: str | None = None) -> pd.DataFrame:
    """Put the published number and ours-minus-published beside each cell of ``table`` that has one.

    ``table``: index = stack (e.g. ``coop+mask``), columns = datasets (bench names; an ``average`` /
    ``mean`` column is matched to the printed averages), values = our top-1 means for one ``shots``.
    Returns the same rows with columns ``(dataset, "ours" | "paper" | "diff")``; ``paper`` and ``diff`` are
    NaN where nothing was published. ``result.attrs["notes"]`` maps (stack, dataset) to the published
    row's source, table and caveat for every matched cell.
    """
    cells = published_cells(shots, backbone, source)
    lookup = {(r.method, r.dataset): r for r in cells.itertuples(index=False)}
    columns, data, notes = [], {}, {}
    for col in table.columns:
        key = "average" if col in AVERAGE_NAMES else col
        ours = pd.to_numeric(table[col], errors="coerce")
        paper = pd.Series([lookup[(s, key)].top1 if (s, key) in lookup else float("nan") for s in table.index],
                          index=table.index, dtype=float)
        for s in table.index:
            if (s, key) in lookup:
                r = lookup[(s, key)]
                notes[(s, col)] = f"{r.source} ({r.table}){': ' + r.note if r.note else ''}"
        for part, values in (("ours", ours), ("paper", paper), ("diff", ours - paper)):
            columns.append((col, part))
            data[(col, part)] = values
    out = pd.DataFrame(data, index=table.index, columns=pd.MultiIndex.from_tuples(columns, names=["dataset", ""]))
    out.attrs["notes"] = notes
    out.attrs["shots"], out.attrs["backbone"] = shots, normalise_backbone(backbone)
    return out
