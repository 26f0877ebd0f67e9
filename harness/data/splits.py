"""A dataset's train/val/test lists as read from CoOp's ``split_zhou_*.json`` files."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .. import atomic
from ..errors import BenchError


@dataclasses.dataclass(frozen=True)
class Datum:
    path: str  # absolute image path
    label: int
    classname: str


@dataclasses.dataclass
class DatasetSplits:
    name: str
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    classnames: list[str]  # one per label, labels ascending (taken from the train split)
    template: str  # prompt template, e.g. "a photo of a {}."
    templates: tuple[str, ...] = ()  # the prompt ensemble (mean of normalised embeddings); () = (template,)

    def __post_init__(self):
        self.templates = tuple(self.templates) or (self.template,)


def classnames_of(items: list[Datum]) -> list[str]:
    names: dict[int, str] = {}
    for d in items:
        names.setdefault(d.label, d.classname)
    return [names[k] for k in sorted(names)]


def read_split_json(split_file: Path, image_dir: Path) -> dict[str, list[Datum]]:
    """Read a CoOp split file: {"train"|"val"|"test": [[relative_path, label, classname], ...]}."""
    if not split_file.is_file():
        raise BenchError(f"split file not found: {split_file}; place the dataset's split_zhou_*.json there")
    try:
        raw = json.loads(split_file.read_text())
        return {
            key: [Datum(str(image_dir / rel), int(label), str(name)) for rel, label, name in raw[key]]
            for key in ("train", "val", "test")
        }
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise BenchError(
            f"split file {split_file} is not a valid CoOp split ({type(err).__name__}: {err}); "
            "re-download it or regenerate it"
        ) from None


def split_json(image_dir: Path, splits: dict[str, list[Datum]]) -> str:
    """A CoOp split file's text, with paths relative to ``image_dir`` (the inverse of read_split_json)."""
    out = {
        key: [[Path(os.path.relpath(d.path, image_dir)).as_posix(), d.label, d.classname] for d in items]
        for key, items in splits.items()
    }
    return json.dumps(out, indent=None)


def write_split_json(split_file: Path, image_dir: Path, splits: dict[str, list[Datum]]) -> None:
    """Write a CoOp split file (atomically) with paths relative to ``image_dir``."""
    atomic.write_text(split_file, split_json(image_dir, splits))
