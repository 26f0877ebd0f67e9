"""What a dataset declares: its name, where its files are, how its splits are read, its prompt templates.

:class:`DatasetDef` reads a CoOp split file under ``--data-root`` unless given another ``reader``;
datasets that find their files elsewhere override :meth:`DatasetDef.locate` (the synthetic ones generate
themselves, own data lives at a path of its own). Every reader returns the same plain lists
(:class:`~bench.data.splits.Datum`), deterministically, so a dataset's content can be fingerprinted.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from ..errors import BenchError
from .splits import DatasetSplits, Datum, classnames_of, read_split_json

DEFAULT_TEMPLATE = "a photo of a {}."


def read_json_split(ds: "DatasetDef", folder: Path) -> dict[str, list[Datum]]:
    return read_split_json(folder / ds.split_file, ds.image_root(folder))


@dataclasses.dataclass
class DatasetCheck:
    """What `bench data check` shows of one dataset."""

    name: str
    folder: Path | None
    status: str  # "ok" | "missing" | "incomplete" | "mismatch" | "error" | "generated"
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    expected: dict[str, int] = dataclasses.field(default_factory=dict)
    classes: int | None = None
    missing_files: int = 0
    missing_example: str | None = None
    message: str = ""  # what is wrong and how to fix it (empty when ok)
    val_from_train: bool = False  # no val split: the few-shot val is drawn from the train images


def check_template(template: str, where: str) -> str:
    if not isinstance(template, str) or template.count("{}") != 1:
        raise BenchError(f"prompt template {template!r} of {where} must hold '{{}}' exactly once, "
                         "where the class name goes, e.g. 'a photo of a {}.'")
    return template


@dataclasses.dataclass(frozen=True)
class DatasetDef:
    name: str  # bench's name for it (lower case), used on the command line and in rows
    title: str  # one line for `bench list datasets`
    folder: str  # folder under the data root
    image_dir: str  # image folder inside ``folder``
    template: str  # the hand-written prompt, "{}" is the class name
    split_file: str | None = None  # split_zhou_*.json inside ``folder``
    paths_relative_to_folder: bool = False  # StanfordCars: split paths start at the dataset folder
    reader: Callable[["DatasetDef", Path], dict[str, list[Datum]]] = read_json_split
    templates: tuple[str, ...] = ()  # prompt ensemble; () means (template,)

    def __post_init__(self):
        object.__setattr__(self, "templates", tuple(self.templates) or (self.template,))

    # -- where the files are -----------------------------------------------------------------------
    def locate(self, data_root: Path | None) -> Path:
        if data_root is None:
            raise BenchError(f"dataset '{self.name}' needs --data-root: the folder that holds '{self.folder}/'")
        folder = Path(data_root).expanduser() / self.folder
        if not folder.is_dir():
            raise BenchError(
                f"dataset '{self.name}' not found: expected folder {folder}; "
                f"check --data-root or run `bench data check` to see what goes where"
            )
        return folder

    def image_root(self, folder: Path) -> Path:
        """The folder that the paths of the dataset's split file are relative to."""
        return folder if self.paths_relative_to_folder else folder / self.image_dir

    @property
    def needs_data_root(self) -> bool:
        return True

    def where(self) -> str:
        """One line for `bench list datasets`: where its files come from."""
        return f"--data-root/{self.folder}"

    # -- reading -----------------------------------------------------------------------------------
    def read(self, data_root: Path | None) -> DatasetSplits:
        folder = self.locate(data_root)
        return self.splits_from(self.reader(self, folder))

    def splits_from(self, splits: dict[str, list[Datum]]) -> DatasetSplits:
        return DatasetSplits(self.name, splits["train"], splits["val"], splits["test"],
                             classnames_of(splits["train"]), self.template, self.templates)

    def preflight(self, data_root: Path | None) -> None:
        """Fail before any trial starts when the dataset or its split file is missing or unreadable."""
        if data_root is not None and not Path(data_root).expanduser().is_dir():
            raise BenchError(f"--data-root {data_root} does not exist; point it at the folder that holds the "
                             "datasets")
        self.locate(Path(data_root) if data_root else None)
        if self.split_file:
            self.read(Path(data_root))  # parses the split file: a broken one fails here, in one line

    def check(self, data_root: Path | None, check_files: bool = True) -> DatasetCheck:
        """Present or not, and the split sizes (datasets with expected sizes compare against them)."""
        try:
            folder = self.locate(data_root)
        except BenchError as err:
            return DatasetCheck(self.name, None, "missing", message=str(err))
        try:
            splits = self.read(data_root)
        except BenchError as err:
            return DatasetCheck(self.name, folder, "error", message=str(err))
        counts = {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}
        return DatasetCheck(self.name, folder, "ok", counts, classes=len(splits.classnames))
