"""Published numbers as data (``bench/reference/published.csv``, shipped in the package) and a side-by-side with a run's table.

The CSV is a transcription of the public tables listed in ``bench/reference/README.md``: one row per
(source, table, protocol, method, dataset, metric, shots, backbone) with the value in percent (``top1``), the
published ± where there is one, the settings the published number was made with (bench's ``settings`` JSON,
``{}`` = the plugin defaults), a ``doubtful`` flag and a note with the caveats. Methods carry bench's stack
names (``mask`` = R-AMT, ``coop+mask`` = CoOp+R-AMT, ...); methods bench does not have keep a lower-case name
of their own (``prograd``, ...). Datasets carry bench's names; a table's printed Average is the dataset
``average``. ``metric`` is the row column the number stands for (``top1``; base-to-new: ``top1`` = base,
``top1_new``, ``hm``). ``shots`` 0 marks a number that holds for every K (zero-shot).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd

from .errors import BenchError

COLUMNS = ["source", "table", "protocol", "method", "dataset", "metric", "shots", "backbone", "settings", "top1", "std",
           "doubtful", "note"]

# When several sources publish the same cell, the first of these wins.
SOURCE_PRIORITY = ["R-AMT README", "R-AMT project page figure", "CoCoOp paper Table 1", "CoCoOp paper Table 3",
                   "Tip-Adapter exp.log", "APE notebook", "third-party plotting script"]

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
    text = {c: str for c in ("source", "table", "protocol", "method", "dataset", "metric", "backbone", "settings",
                             "doubtful", "note")}
    df = pd.read_csv(path, dtype=text, keep_default_na=False, na_values={"std": [""]})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise BenchError(f"{path} lacks columns {missing}; restore it from the repository")
    df["shots"] = df["shots"].astype(int)
    df["top1"] = df["top1"].astype(float)
    df["std"] = pd.to_numeric(df["std"], errors="coerce")
    df["doubtful"] = df["doubtful"].str.lower().isin(["true", "yes", "1"])
    df["settings"] = df["settings"].map(lambda t: settings_key(json.loads(t or "{}")))
    return df[COLUMNS]


def settings_key(settings: dict) -> str:
    """One spelling of a settings dict (method -> key -> value), to match rows with published cells."""
    return json.dumps({m: dict(sorted(v.items())) for m, v in sorted(settings.items()) if v}, sort_keys=True)


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """All published numbers, one row per cell (a fresh copy, safe to modify)."""
    return _load(str(path or csv_path())).copy()


def normalise_backbone(name: str) -> str:
    return _BACKBONE_ALIASES.get(name.lower(), name)


def published_cells(shots: int, backbone: str, source: str | None = None,
                    published: pd.DataFrame | None = None, *, protocol: str = "fewshot", metric: str = "top1",
                    any_shots: frozenset[str] | set[str] = frozenset(), doubtful: bool = False) -> pd.DataFrame:
    """One published row per (method, dataset, settings) for these shots, backbone, protocol and metric, by
    source priority. A number published at ``shots`` wins over one for every K (shots 0); methods in
    ``any_shots`` (stacks that learn nothing from the shots) also take a number published at another K.
    Rows flagged ``doubtful`` are left out unless ``doubtful``."""
    df = load_published() if published is None else published
    df = df[(df.backbone == normalise_backbone(backbone)) & (df.protocol == protocol) & (df.metric == metric)]
    if not doubtful:
        df = df[~df.doubtful]
    df = df[(df.shots == shots) | (df.shots == 0) | df.method.isin(set(any_shots))]
    if source is not None:
        if source not in set(df.source) | set(SOURCE_PRIORITY):
            raise BenchError(f"unknown source '{source}'; sources: {', '.join(SOURCE_PRIORITY)}")
        df = df[df.source == source]
    rank = {s: i for i, s in enumerate(SOURCE_PRIORITY)}
    distance = (df.shots != shots).astype(int) + (df.shots != 0).astype(int) * (df.shots != shots).astype(int)
    df = df.assign(_rank=df.source.map(lambda s: rank.get(s, len(rank))), _distance=distance)
    df = df.sort_values(["_distance", "_rank"], kind="stable").drop_duplicates(["method", "dataset", "settings"])
    return df.drop(columns=["_rank", "_distance"]).reset_index(drop=True)


def compare(table: pd.DataFrame, shots: int, backbone: str, source: str | None = None, *,
            protocol: str = "fewshot", metric: str = "top1", stacks: dict | None = None,
            settings: dict | None = None, any_shots: frozenset[str] | set[str] = frozenset()) -> pd.DataFrame:
    """Put the published number and ours-minus-published beside each cell of ``table`` that has one.

    ``table``: index = report rows (stack names, or labels with ``stacks`` mapping each to its stack and
    ``settings`` to its non-default settings, ``{}`` when absent), columns = datasets (bench names; an
    ``average`` / ``mean`` column is matched to the printed averages), values = our means for one ``shots``.
    A published cell is used only for a row made with the settings it was published with.
    Returns the same rows with columns ``(dataset, "ours" | "paper" | "diff")``; ``paper`` and ``diff`` are
    NaN where nothing was published. ``result.attrs``: ``notes`` maps (row, dataset) to the published cell's
    source, table and caveat for every matched cell; ``unmatched`` maps a row to why it got no paper value
    where the method was published with other settings, or only in rows flagged doubtful.
    """
    cells = published_cells(shots, backbone, source, protocol=protocol, metric=metric, any_shots=any_shots)
    lookup = {(r.method, r.dataset, r.settings): r for r in cells.itertuples(index=False)}
    stacks = stacks or {}
    keys = {row: settings_key((settings or {}).get(row, {})) for row in table.index}
    columns, data, notes = [], {}, {}
    for col in table.columns:
        key = "average" if col in AVERAGE_NAMES else col
        ours = pd.to_numeric(table[col], errors="coerce")
        found = {row: lookup.get((stacks.get(row, row), key, keys[row])) for row in table.index}
        paper = pd.Series([r.top1 if r is not None else float("nan") for r in found.values()], index=table.index,
                          dtype=float)
        for row, r in found.items():
            if r is not None:
                notes[(row, col)] = f"{r.source} ({r.table}){': ' + r.note if r.note else ''}"
        for part, values in (("ours", ours), ("paper", paper), ("diff", ours - paper)):
            columns.append((col, part))
            data[(col, part)] = values
    out = pd.DataFrame(data, index=table.index, columns=pd.MultiIndex.from_tuples(columns, names=["dataset", ""]))
    out.attrs["notes"] = notes
    out.attrs["unmatched"] = _unmatched(table.index, stacks, keys, notes, shots, backbone, source, protocol, metric,
                                        any_shots)
    out.attrs["shots"], out.attrs["backbone"] = shots, normalise_backbone(backbone)
    return out


def _unmatched(index, stacks, keys, notes, shots, backbone, source, protocol, metric, any_shots) -> dict[str, str]:
    """Why rows without any paper value have none, where something close to them was published."""
    every = published_cells(shots, backbone, source, protocol=protocol, metric=metric, any_shots=any_shots,
                            doubtful=True)
    matched = {row for row, _ in notes}
    out = {}
    for row in index:
        if row in matched:
            continue
        same = every[every.method == stacks.get(row, row)]
        if same.empty:
            continue
        if (same.settings == keys[row]).any():
            out[row] = "its published numbers are flagged doubtful: " + same[same.settings == keys[row]].note.iloc[0]
        else:
            shown = ", ".join(sorted(set(same.settings)))
            out[row] = f"published with settings {shown}, this row has {keys[row]}"
    return out
