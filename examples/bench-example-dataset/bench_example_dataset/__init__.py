"""Stripe orientations (4 classes), generated on first use: a dataset plugin for bench.

``STRIPES`` is registered through the ``bench.datasets`` entry point in ``pyproject.toml``.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from bench.data.dataset import DatasetDef
from bench.data.splits import Datum

CLASSES = ("horizontal", "vertical", "diagonal", "checkerboard")
PER_SPLIT = {"train": 12, "val": 4, "test": 10}
SIZE = 32


def _pattern(kind: str, period: int, phase: int) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    if kind == "horizontal":
        on = (y + phase) // period % 2
    elif kind == "vertical":
        on = (x + phase) // period % 2
    elif kind == "diagonal":
        on = (x + y + phase) // period % 2
    else:
        on = ((x + phase) // period + (y + phase) // period) % 2
    return on.astype(bool)


def _generate(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in PER_SPLIT.items():
        for cname in CLASSES:
            (folder / split / cname).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                on = _pattern(cname, int(rng.integers(2, 6)), int(rng.integers(0, 8)))
                fg, bg = rng.integers(120, 256, 3), rng.integers(0, 100, 3)
                image = np.where(on[..., None], fg, bg).astype(np.uint8)
                Image.fromarray(image).save(folder / split / cname / f"{i:03d}.png")


class GeneratedStripes(DatasetDef):
    """Found in ``--data-root/example_stripes`` if there, else generated into the bench cache."""

    def locate(self, data_root):
        if data_root is not None and (Path(data_root) / self.folder).is_dir():
            return super().locate(data_root)
        cache = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench")).expanduser()
        target = cache / self.folder
        if not (target / "test").is_dir():
            tmp = cache / f".tmp-{self.folder}-{uuid.uuid4().hex[:8]}"
            _generate(tmp)
            try:
                os.rename(tmp, target)  # another process may have won the race: keep its copy
            except OSError:
                pass
        return target

    @property
    def needs_data_root(self) -> bool:
        return False

    def where(self) -> str:
        return f"generated (or --data-root/{self.folder})"

    def preflight(self, data_root) -> None:
        self.locate(data_root)


def read_stripes(ds: DatasetDef, folder: Path) -> dict[str, list[Datum]]:
    return {split: [Datum(str(folder / split / c / f), label, c)
                    for label, c in enumerate(CLASSES) for f in sorted(os.listdir(folder / split / c))]
            for split in PER_SPLIT}


STRIPES = GeneratedStripes(
    name="example_stripes", title="example plugin: stripe orientation (4 classes, generated)",
    folder="example_stripes", image_dir="", template="a photo of {} stripes.", reader=read_stripes,
    templates=("a photo of {} stripes.", "a {} striped pattern."),
)
