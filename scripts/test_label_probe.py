"""Check that `bench tune` never selects on the test split: run it once on the datasets as they are and once
on copies whose test labels are shuffled among the test images, and compare every cell's chosen settings.

    python scripts/test_label_probe.py --methods tip_adapter,clip_adapter,coop --datasets syn_colour,syn_novel \\
        --shots 4 --budget 6

Any other `bench tune` option may follow. The first run is `<run>` (default `probe`; finished trials are
reused), the second `<run>-permuted`, on copies under `<results>/<run>-permuted-data`. Prints one line per
cell and exits 1 when a chosen setting differs (or a cell has no chosen settings in either run).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from bench.data.catalog import get_dataset


def permuted_copy(name: str, data_root: str | None, to: Path) -> None:
    """``name``'s folder copied under ``to`` with its test labels (and class names) shuffled among the test
    images; train and val untouched."""
    dataset = get_dataset(name)
    folder = dataset.locate(data_root)
    target = to / dataset.folder
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder, target)
    split_path = target / dataset.split_file
    split = json.loads(split_path.read_text())
    labels = [item[1:] for item in split["test"]]
    random.Random(0).shuffle(labels)
    split["test"] = [[item[0], *label] for item, label in zip(split["test"], labels)]
    split_path.write_text(json.dumps(split))


def chosen(results: str, run: str) -> dict[tuple, str]:
    rows = pd.read_parquet(Path(results) / run / "trials")
    rows = rows[(rows["selection"] == "val-tuned") & (rows["status"] == "ok")]
    return {(r.dataset, r.shots, r.seed, r.stack): r.tuned for r in rows.itertuples()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", required=True)
    parser.add_argument("--run", default="probe")
    parser.add_argument("--results", default="results")
    parser.add_argument("--data-root", default=None)
    known, rest = parser.parse_known_args()
    permuted = Path(known.results) / f"{known.run}-permuted-data"
    for name in known.datasets.split(","):
        permuted_copy(name.strip(), known.data_root, permuted)
    common = ["bench", "tune", "--datasets", known.datasets, "--results", known.results, "--no-report", *rest]
    first = common + ["--run", known.run] + (["--data-root", known.data_root] if known.data_root else [])
    second = common + ["--run", f"{known.run}-permuted", "--data-root", str(permuted)]
    for command in (first, second):
        subprocess.run(command, check=True)
    a, b = chosen(known.results, known.run), chosen(known.results, f"{known.run}-permuted")
    same = True
    for cell in sorted(set(a) | set(b)):
        ok = cell in a and cell in b and json.loads(a[cell]) == json.loads(b[cell])
        same &= ok
        print(f"{'same' if ok else 'DIFFERENT'}  {' '.join(map(str, cell))}: {a.get(cell)} | permuted: {b.get(cell)}")
    print("chosen settings unchanged by permuted test labels" if same else "chosen settings CHANGED")
    return 0 if same and a else 1


if __name__ == "__main__":
    sys.exit(main())
