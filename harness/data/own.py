"""Own data: any image folder or image list is a dataset, with no code.

An own-data entry is a path (or a suite-file table with ``path``) in one of these layouts:

* ``<class>/<image>`` folders (images may sit in sub-folders of a class folder): the split is made the way
  Dassl's ``read_and_split_data`` makes it for CoOp's datasets that ship none -- per class, shuffle, 50 %
  train, 20 % val (``round``), the rest test -- with a fixed seed, and written next to the data as
  ``split_bench.json`` (CoOp's split format, paths relative to the folder) to audit or reuse elsewhere.
  Dassl shuffles every class with one unseeded generator; here each class has its own generator, seeded
  from the split seed and the class folder's name, over the file names in sorted order, so the split is
  the same on every machine and editing one class changes only that class's split. The file is rewritten
  whenever the folder's images change.
* ``train/``, ``val/``, ``test/`` sub-folders each holding ``<class>/<image>``; ``val/`` is optional.
* a ``.csv`` or ``.jsonl`` list with the columns ``path,label[,split]`` (paths relative to the list's
  folder; ``label`` is the class; without ``split`` the rows are split 50/20/30 as class folders are, and
  the split is written next to the list as ``<list name>.split_bench.json``).
* a folder holding a CoOp-style split JSON (``split.json`` or one ``split_zhou_*.json``; paths relative to
  that folder or to one of its sub-folders), or such a ``.json`` file itself.

Without a validation split (no ``val/`` folder, no ``val`` rows, an empty ``val`` list) the few-shot val
images are drawn from the train images not picked as shots (:func:`bench.data.fewshot.fewshot_split`).

Class names are the folder names (or list labels) with ``_`` and ``-`` turned into spaces, unless a
``classnames.txt`` beside the data (lines ``<folder or label> <class name>``) or a suite table's
``classnames`` maps them; a split JSON's names are taken as they are. The prompt is ``a photo of a {}.``
unless a suite table gives ``template`` or a ``templates`` list (an ensemble).

Bad data stops with one line naming the file or class and the fix, before anything is written. Files in
class folders that are not images (by extension) are skipped, with their count in one warning line; a
list naming a file that is not an image is refused. Images are decoded once when a run is planned and by
`bench data check`, so an unreadable file is named before any trial starts.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Container, Iterable

from .. import atomic
from ..errors import BenchError
from .classes import read_classnames
from .dataset import DEFAULT_TEMPLATE, DatasetCheck, DatasetDef, check_template
from .splits import DatasetSplits, Datum, read_split_json, split_json

SPLIT_SEED = 1
P_TRAIN, P_VAL = 0.5, 0.2  # Dassl's read_and_split_data(p_trn=0.5, p_val=0.2); the rest is test
SPLIT_FILE = "split_bench.json"
CLASSNAMES_FILE = "classnames.txt"
LIST_SUFFIXES = (".csv", ".jsonl")
SPLITS = ("train", "val", "test")
TABLE_KEYS = {"path", "name", "template", "templates", "classnames"}


def _image_extensions() -> frozenset[str]:
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in _image_extensions()


# -- entries: what a trial stores -------------------------------------------------------------------

def looks_like_path(entry: str) -> bool:
    return (os.sep in entry or "/" in entry or entry.startswith(("~", "."))
            or entry.endswith((*LIST_SUFFIXES, ".json")) or Path(entry).expanduser().exists())


def is_own_entry(entry: str) -> bool:
    return entry.startswith("{") or looks_like_path(entry)


def _absolute(path: str, base: Path | None) -> Path:
    p = Path(path).expanduser()
    p = p if p.is_absolute() else (base or Path.cwd()) / p
    p = Path(os.path.abspath(p))
    if p.is_dir() or (p.is_file() and p.suffix.lower() in (*LIST_SUFFIXES, ".json")):
        return p
    if p.is_file():
        raise BenchError(f"dataset {p} is a file but not a .csv/.jsonl list or a .json split; "
                         "give an image folder or such a file")
    raise BenchError(f"dataset {path}: no such folder or file ({p}); give an existing image folder "
                     "or a .csv/.jsonl list")


def anchored(item: Any, folder: Path) -> Any:
    """A suite file's dataset item with a relative own-data path made relative to ``folder``."""
    def join(path: str) -> str:
        p = Path(path).expanduser()
        return path if p.is_absolute() else str(folder / p)

    if isinstance(item, dict) and isinstance(item.get("path"), str):
        return {**item, "path": join(item["path"])}
    if isinstance(item, str) and ("/" in item or item.startswith((".", "~")) or item.endswith(LIST_SUFFIXES)):
        return join(item)
    return item


def path_entry(path: str, base: Path | None = None) -> str:
    return str(_absolute(path, base))


def table_entry(table: dict[str, Any], base: Path | None = None) -> str:
    """A suite-file dataset table as canonical JSON (sorted keys, absolute path)."""
    unknown = set(table) - TABLE_KEYS
    if unknown:
        raise BenchError(f"dataset table {table} has unknown keys {sorted(unknown)}; allowed: {sorted(TABLE_KEYS)}")
    if not isinstance(table.get("path"), str):
        raise BenchError(f"dataset table {table} needs a 'path' (an image folder or a .csv/.jsonl list)")
    if "template" in table and "templates" in table:
        raise BenchError(f"dataset table for {table['path']} gives both 'template' and 'templates'; keep one")
    out = {**table, "path": path_entry(table["path"], base)}
    source = _source(out)  # validates name, templates and class names now, before any trial
    return json.dumps(dataclasses.asdict(source), sort_keys=True)


@dataclasses.dataclass(frozen=True)
class OwnSource:
    """What the user gave: a path and, from a suite table, a name, templates and class names."""

    path: str
    name: str | None = None
    templates: tuple[str, ...] = ()
    classnames: tuple[tuple[str, str], ...] = ()


def _source(raw: dict[str, Any]) -> OwnSource:
    where = f"dataset {raw['path']}"
    templates = raw.get("templates", [raw["template"]] if "template" in raw else [])
    if isinstance(templates, str) or not isinstance(templates, (list, tuple)):
        raise BenchError(f"'templates' of {where} must be a list of strings, e.g. [\"a photo of a {{}}.\"]")
    if "templates" in raw and not templates:
        raise BenchError(f"'templates' of {where} is empty; give at least one template")
    names = raw.get("classnames", {})
    if not isinstance(names, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                              for k, v in names.items()):
        raise BenchError(f"'classnames' of {where} must map folder names (or labels) to class names, "
                         "e.g. {{ n01 = \"tabby cat\" }}")
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name)):
        raise BenchError(f"'name' of {where} must be a word of letters, digits, '_', '-' or '.', got {name!r}")
    return OwnSource(path=raw["path"], name=name, templates=tuple(check_template(t, where) for t in templates),
                     classnames=tuple(sorted((k, v.strip()) for k, v in names.items())))


def own_dataset(entry: str, taken: Container[str] = ()) -> "OwnDataset":
    """The dataset of own-data ``entry``; ``taken``: the registered names it may not have."""
    if entry.startswith("{"):
        try:
            raw = json.loads(entry)
        except json.JSONDecodeError:
            raise BenchError(f"dataset entry {entry[:60]!r} is neither a name, a path nor a dataset table") from None
        source = _source({**raw, "classnames": dict(raw.get("classnames", {}))})
    else:
        source = OwnSource(path=path_entry(entry))
    return OwnDataset.from_source(source, taken)


# -- the dataset -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OwnDataset(DatasetDef):
    classnames: tuple[tuple[str, str], ...] = ()  # folder name or label -> class name (a suite table's)

    @classmethod
    def from_source(cls, source: OwnSource, taken: Container[str] = ()) -> "OwnDataset":
        path = Path(source.path)
        name = source.name or (path.stem if path.is_file() else path.name)
        if name in taken:
            raise BenchError(f"dataset {path} would be named '{name}', the name of a registered dataset; give it "
                             f"another name in a suite-file table (path = \"{path}\", name = \"my_{name}\")")
        templates = source.templates or (DEFAULT_TEMPLATE,)
        return cls(name=name, title=f"own data: {_layout_of(path)} at {path}", folder=str(path), image_dir="",
                   template=templates[0], templates=templates, classnames=source.classnames)

    @property
    def path(self) -> Path:
        return Path(self.folder)

    @property
    def needs_data_root(self) -> bool:
        return False

    def where(self) -> str:
        return self.folder

    def locate(self, data_root: Path | None = None) -> Path:
        if not self.path.exists():
            raise BenchError(f"dataset '{self.name}': {self.path} no longer exists; restore it or fix the path")
        return self.path

    def image_root(self, folder: Path) -> Path:
        return folder.parent if folder.is_file() else folder

    def read(self, data_root: Path | None = None, verify: bool = False, notes: list[str] | None = None
             ) -> DatasetSplits:
        """The splits; ``verify`` also decodes every image. Warnings go to ``notes`` (one line each)."""
        path = self.locate()
        reader = _read_list if path.is_file() and path.suffix.lower() in LIST_SUFFIXES else (
            _read_split_json if path.is_file() or _split_json_in(path) else (
                _read_split_folders if (path / "train").is_dir() or (path / "test").is_dir() else _read_class_folders))
        splits, write = reader(self, path, notes if notes is not None else [])
        items = [*splits["train"], *splits["val"], *splits["test"]]
        _check_classes(self, splits)
        if verify:
            verify_images(items)
        if write is not None:
            _write_split(write, self.image_root(path), splits, notes if notes is not None else [])
        if not splits["val"]:
            splits["val"] = splits["train"]  # the sampler draws val from the train images it did not pick
        return self.splits_from(splits)

    def preflight(self, data_root: Path | None) -> None:
        from ..console import err

        notes: list[str] = []
        self.read(verify=True, notes=notes)
        for note in notes:
            err.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)

    def check(self, data_root: Path | None, check_files: bool = True) -> DatasetCheck:
        notes: list[str] = []
        try:
            splits = self.read(verify=check_files, notes=notes)
        except BenchError as err:
            return DatasetCheck(self.name, self.path, "error", message=str(err))
        from_train = splits.val is splits.train
        counts = {"train": len(splits.train), "test": len(splits.test), **({} if from_train else {"val": len(splits.val)})}
        return DatasetCheck(self.name, self.path, "ok", counts, classes=len(splits.classnames),
                            message="; ".join(notes), val_from_train=from_train)

    # -- class names --------------------------------------------------------------------------------
    def class_map(self, root: Path) -> dict[str, str]:
        """classnames.txt beside the data, then the suite table's map on top."""
        file = root / CLASSNAMES_FILE
        out = read_classnames(file, "folder or label", "fix that line") if file.is_file() else {}
        out.update(dict(self.classnames))
        return out


def _layout_of(path: Path) -> str:
    if path.is_file():
        return "image list" if path.suffix.lower() in LIST_SUFFIXES else "split file"
    if path.is_dir() and _split_json_in(path):
        return "split file"
    if (path / "train").is_dir() or (path / "test").is_dir():
        return "train/val/test folders"
    return "class folders"


def _split_json_in(folder: Path) -> Path | None:
    if (folder / "split.json").is_file():
        return folder / "split.json"
    found = sorted(folder.glob("split_zhou_*.json"))
    if len(found) > 1:
        raise BenchError(f"{folder} holds {len(found)} split files ({found[0].name}, {found[1].name}); keep one")
    return found[0] if found else None


def display_name(key: str) -> str:
    return " ".join(key.replace("_", " ").replace("-", " ").split())


def _named_classes(ds: OwnDataset, keys: Iterable[str], root: Path, what: str) -> dict[str, str]:
    """key -> class name, refusing map entries that name no class and names that collide."""
    keys = list(keys)
    mapping = ds.class_map(root)
    stray = sorted(set(mapping) - set(keys))
    if stray:
        raise BenchError(f"dataset '{ds.name}': class names are given for '{stray[0]}', which is not one of its "
                         f"{what}; fix {root / CLASSNAMES_FILE} or the suite table's classnames")
    names = {k: mapping.get(k, display_name(k)) for k in keys}
    seen: dict[str, str] = {}
    for key, cname in names.items():
        if not cname:
            raise BenchError(f"dataset '{ds.name}': {what[:-1]} '{key}' gives an empty class name; rename it "
                             f"or name it in {CLASSNAMES_FILE}")
        other = seen.setdefault(cname.lower(), key)
        if other != key:
            raise BenchError(f"dataset '{ds.name}': {what} '{other}' and '{key}' both become the class name "
                             f"'{cname}'; rename one or map them apart in {CLASSNAMES_FILE}")
    return names


def _check_classes(ds: OwnDataset, splits: dict[str, list[Datum]]) -> None:
    labels = {d.label for d in splits["train"]}
    if len(labels) < 2:
        raise BenchError(f"dataset '{ds.name}' has {len(labels)} class{'' if len(labels) == 1 else 'es'} with train "
                         "images; a classifier needs at least two: add another class")
    if not splits["test"]:
        raise BenchError(f"dataset '{ds.name}' has no test images; add test images")
    unknown = {d.label for d in (*splits["val"], *splits["test"])} - labels
    if unknown:
        d = next(d for d in (*splits["val"], *splits["test"]) if d.label in unknown)
        raise BenchError(f"dataset '{ds.name}': class '{d.classname}' ({d.path}) has no train images; "
                         "add train images of it or remove it")


# -- class folders --------------------------------------------------------------------------------

def _visible(name: str) -> bool:
    return not name.startswith(".")


def _class_files(folder: Path) -> tuple[list[str], int]:
    """Image files under a class folder (relative to it, sorted) and how many other files were skipped."""
    images, skipped = [], 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        rel_dir = os.path.relpath(dirpath, folder)
        for f in filenames:
            if not _visible(f):
                continue
            if is_image(f):
                images.append(f if rel_dir == "." else f"{Path(rel_dir).as_posix()}/{f}")
            else:
                skipped += 1
    return sorted(images), skipped


def scan_class_folders(root: Path, ds_name: str) -> tuple[dict[str, list[str]], int]:
    """{class folder: image paths relative to it} for the class folders of ``root``, and the skip count."""
    if not root.is_dir():
        raise BenchError(f"dataset '{ds_name}': {root} is not a folder")
    entries = sorted(e.name for e in os.scandir(root) if _visible(e.name))
    classes = [e for e in entries if (root / e).is_dir()]
    if not entries:
        raise BenchError(f"dataset '{ds_name}': {root} is empty; put images in {root}/<class>/")
    if not classes:
        raise BenchError(f"dataset '{ds_name}': {root} holds no class folders; put images in {root}/<class>/")
    out, skipped = {}, 0
    for cls in classes:
        images, n_other = _class_files(root / cls)
        if not images:
            raise BenchError(f"dataset '{ds_name}': class folder {root / cls} holds no images; add images or "
                             "remove the folder")
        out[cls], skipped = images, skipped + n_other
    loose = [e for e in entries if e not in classes and is_image(e)]
    return out, skipped + len(loose)


def _skip_note(notes: list[str], ds_name: str, root: Path, skipped: int) -> None:
    if skipped:
        notes.append(f"dataset '{ds_name}': skipped {skipped} files under {root} that are not images in a class "
                     f"folder (images are files ending in .png, .jpg, ...)")


def split_class(key: str, files: list[str]) -> dict[str, list[str]]:
    """Dassl's 50/20/30 split of one class, with a generator of its own (see the module docstring)."""
    files = sorted(files)
    random.Random(f"bench-split:{SPLIT_SEED}:{key}").shuffle(files)
    n = len(files)
    n_train, n_val = round(n * P_TRAIN), round(n * P_VAL)
    if min(n_train, n_val, n - n_train - n_val) < 1:
        raise BenchError(f"class '{key}' has {n} image{'s' * (n != 1)}; a 50/20/30 train/val/test split needs "
                         "at least 4: add images, or give train/ and test/ folders")
    return {"train": files[:n_train], "val": files[n_train:n_train + n_val], "test": files[n_train + n_val:]}


def _read_class_folders(ds: OwnDataset, root: Path, notes: list[str]):
    by_class, skipped = scan_class_folders(root, ds.name)
    names = _named_classes(ds, by_class, root, "class folders")
    out: dict[str, list[Datum]] = {s: [] for s in SPLITS}
    for label, (key, files) in enumerate(by_class.items()):
        try:
            parts = split_class(key, files)
        except BenchError as err:
            raise BenchError(f"dataset '{ds.name}': {err} ({root / key})") from None
        for split, rels in parts.items():
            out[split].extend(Datum(str(root / key / rel), label, names[key]) for rel in rels)
    _skip_note(notes, ds.name, root, skipped)
    return out, root / SPLIT_FILE


def _read_split_folders(ds: OwnDataset, root: Path, notes: list[str]):
    for needed in ("train", "test"):
        if not (root / needed).is_dir():
            raise BenchError(f"dataset '{ds.name}': {root} has {'test' if needed == 'train' else 'train'}/ but no "
                             f"{needed}/; add {root / needed}/<class>/... (val/ is optional)")
    scans = {s: scan_class_folders(root / s, ds.name) for s in SPLITS if (root / s).is_dir()}
    keys = list(scans["train"][0])
    for split, (by_class, _) in scans.items():
        stray = [k for k in by_class if k not in keys]
        if stray:
            raise BenchError(f"dataset '{ds.name}': {root / split / stray[0]} has no train/ folder of the same "
                             f"name; every class needs train images ({root / 'train' / stray[0]})")
    names = _named_classes(ds, keys, root, "class folders")
    labels = {k: i for i, k in enumerate(keys)}
    out = {s: [Datum(str(root / s / k / rel), labels[k], names[k]) for k, rels in scans[s][0].items() for rel in rels]
           if s in scans else [] for s in SPLITS}
    _skip_note(notes, ds.name, root, sum(n for _, n in scans.values()))
    return out, None


# -- lists ----------------------------------------------------------------------------------------

def _list_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a .csv (header path,label[,split]) or .jsonl list."""
    rows: list[tuple[int, dict[str, str]]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            for column in ("path", "label"):
                if column not in columns:
                    raise BenchError(f"list {path} has no '{column}' column; its first line must name the columns: "
                                     "path,label[,split]")
            for i, row in enumerate(reader, 2):
                rows.append((i, {(k or "").strip(): (v or "").strip() for k, v in row.items()}))
        return rows
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise BenchError(f"list {path} line {i} is not JSON; write one object per line, e.g. "
                             '{"path": "a/1.png", "label": "cat"}') from None
        if not isinstance(row, dict):
            raise BenchError(f"list {path} line {i} is not a JSON object with 'path' and 'label'")
        for column in ("path", "label"):
            if column not in row:
                raise BenchError(f"list {path} line {i} has no '{column}'; every line needs path and label")
        rows.append((i, {k: str(v).strip() for k, v in row.items() if v is not None}))
    return rows


def _read_list(ds: OwnDataset, path: Path, notes: list[str]):
    root = path.parent
    rows = _list_rows(path)
    if not rows:
        raise BenchError(f"list {path} holds no images; add lines path,label[,split]")
    entries = []
    with_split = [bool(r.get("split")) for _, r in rows]
    if any(with_split) and not all(with_split):
        i = rows[with_split.index(False)][0]
        raise BenchError(f"list {path} line {i} has no split; give train, val or test on every line or on none")
    for i, row in rows:
        rel, key, split = row.get("path", ""), row.get("label", ""), row.get("split") or None
        if not rel or not key:
            raise BenchError(f"list {path} line {i} has an empty {'path' if not rel else 'label'}; fill it in")
        if split is not None and split not in SPLITS:
            raise BenchError(f"list {path} line {i}: split '{split}' is not train, val or test; use one of those")
        image = Path(rel).expanduser()
        image = image if image.is_absolute() else root / image
        if not image.is_file():
            raise BenchError(f"list {path} line {i}: image {image} does not exist; fix the path (relative paths "
                             "start at the list's folder)")
        if not is_image(image.name):
            raise BenchError(f"list {path} line {i}: {image} is not an image file (by its extension); remove the line")
        entries.append((str(image), key, split))
    keys = sorted({k for _, k, _ in entries}, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    names = _named_classes(ds, keys, root, "labels")
    labels = {k: i for i, k in enumerate(keys)}
    out: dict[str, list[Datum]] = {s: [] for s in SPLITS}
    if entries[0][2] is not None:
        for image, key, split in entries:
            out[split].append(Datum(image, labels[key], names[key]))
        return out, None
    by_class: dict[str, list[str]] = {k: [] for k in keys}
    for image, key, _ in entries:
        by_class[key].append(image)
    for key in keys:
        for split, images in split_class(key, by_class[key]).items():
            out[split].extend(Datum(image, labels[key], names[key]) for image in images)
    for split in SPLITS:
        out[split].sort(key=lambda d: (d.label, d.path))
    return out, root / f"{path.stem}.{SPLIT_FILE}"


# -- split JSON -----------------------------------------------------------------------------------

def _read_split_json(ds: OwnDataset, path: Path, notes: list[str]):
    file = path if path.is_file() else _split_json_in(path)
    folder = file.parent
    try:
        first = json.loads(file.read_text())["train"][0][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        first = None
    base = folder
    if first is not None and not (folder / first).exists():
        subs = [folder / e.name for e in os.scandir(folder) if e.is_dir() and (folder / e.name / first).exists()]
        base = subs[0] if len(subs) == 1 else folder
    splits = read_split_json(file, base)
    missing = [d.path for items in splits.values() for d in items if not os.path.isfile(d.path)]
    if missing:
        raise BenchError(f"split file {file}: {len(missing)} listed images do not exist (e.g. {missing[0]}); paths "
                         f"are relative to {base}: fix them or restore the images")
    keys = list(dict.fromkeys(d.classname for items in splits.values() for d in items))
    mapping = ds.class_map(folder)
    stray = sorted(set(mapping) - set(keys))
    if stray:
        raise BenchError(f"dataset '{ds.name}': class names are given for '{stray[0]}', which is not a class of "
                         f"{file}; fix {folder / CLASSNAMES_FILE} or the suite table's classnames")
    if mapping:
        splits = {s: [dataclasses.replace(d, classname=mapping.get(d.classname, d.classname)) for d in items]
                  for s, items in splits.items()}
    return splits, None


# -- checks and the split file ----------------------------------------------------------------------

def verify_images(items: Iterable[Datum]) -> None:
    """Decode every image once; the first that cannot be read is named."""
    from PIL import Image

    for d in items:
        try:
            with Image.open(d.path) as im:
                im.verify()
        except Exception as err:  # PIL raises many kinds for damaged files
            raise BenchError(f"image {d.path} cannot be read ({type(err).__name__}); replace or remove it") from None


def _write_split(file: Path, root: Path, splits: dict[str, list[Datum]], notes: list[str]) -> None:
    """Write the split next to the data unless the same split is already there (atomic replace)."""
    text = split_json(root, splits)
    try:
        if file.is_file() and file.read_bytes() == text.encode("utf-8"):
            return
        atomic.write_text(file, text)
    except OSError as err:
        notes.append(f"could not write the split file {file} ({err.strerror or err}); the same split is made "
                     "again on every read")
