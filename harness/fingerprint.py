"""Fingerprints of what a trial reads: its data and its starting weights.

A result's identity must follow the *content* it was made from, not where that content lives: the same
data copied to another folder keeps its fingerprint, and a changed label, class name, template or image
file changes it. A data fingerprint covers every split list as read (paths relative to the dataset's
common folder, labels, class names), the prompt templates, and the size of each image file the trial
reads (its few-shot train and val picks, and the test split). File contents are not hashed: for the
ImageNet test split alone that would read 6 GB at planning time; sizes catch a replaced image in
practice (compressed formats), and everything the cache keys on below adds the file's modification time.

A weights fingerprint is the pretrained tag, or the SHA-256 of a checkpoint file (memoised per path, size
and modification time in the cache folder, so a 600 MB checkpoint is hashed once).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from . import atomic
from .data.catalog import get_dataset
from .data.fewshot import fewshot_split
from .errors import BenchError
from .models import resolve


def _sha(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def common_root(data) -> str:
    paths = [d.path for split in (data.train, data.val, data.test) for d in split]
    return os.path.commonpath(paths) if paths else ""


class _Sizes:
    """File sizes for fingerprints, remembering which listed files are missing."""

    def __init__(self):
        self.missing: list[str] = []

    def __call__(self, path: str) -> str:
        try:
            return str(os.stat(path).st_size)
        except OSError:
            self.missing.append(path)
            return "missing"


def _relative(data):
    root = common_root(data)
    return lambda d: os.path.relpath(d.path, root) if root else d.path


def dataset_fingerprint(full, targets: Sequence = ()) -> tuple[str, list[str]]:
    """Fingerprint of a dataset version, the same for every shot count and seed: every split list (relative
    paths, labels, class names), the templates, and the sizes of the test images; with ``targets``, the
    same of each further dataset a trial tests on (domain shift). Also returns missing test files."""
    size = _Sizes()

    def lines(data):
        rel = _relative(data)
        yield f"name={data.name}"
        yield "templates=" + json.dumps(list(getattr(data, "templates", None) or [data.template]))
        yield "classnames=" + json.dumps(list(data.classnames))
        for split in ("train", "val", "test"):
            yield f"[{split}]"
            yield from (f"{rel(d)}|{d.label}|{d.classname}" for d in getattr(data, split))
        yield "[test sizes]"
        yield from (f"{rel(d)}|{size(d.path)}" for d in data.test)

    parts = list(lines(full))
    for target in targets:
        parts += ["[target]", *lines(target)]
    return _sha(parts), size.missing


def trial_fingerprint(dataset_fp: str, full, picks: Sequence[Sequence]) -> tuple[str, list[str]]:
    """Fingerprint of the data one trial reads: its dataset's, plus the sizes of its few-shot picks."""
    size, rel = _Sizes(), _relative(full)
    return _sha([dataset_fp, *(f"{rel(d)}|{size(d.path)}" for items in picks for d in items)]), size.missing


class Listings:
    """Datasets as listed, and their version fingerprints, read once per holder: planning fills
    :data:`PROCESS` afresh, and every trial of the process (a Ray worker's, or the serial executor's) reuses
    it, so a dataset is listed and fingerprinted once per process, not once per trial (ImageNet: 1.28 M
    files listed, 50,000 test files sized). A trial still checks its data against the planned fingerprint."""

    def __init__(self) -> None:
        self.reads: dict = {}  # (dataset, data root) -> its splits as read
        self.versions: dict = {}  # ids of a listing and its targets' -> (fingerprint, missing files)

    def clear(self) -> None:
        self.reads.clear()
        self.versions.clear()

    def read(self, name: str, data_root: str | None):
        key = (name, data_root)
        if key not in self.reads:
            self.reads[key] = get_dataset(name).read(data_root)
        return self.reads[key]

    def version(self, full, targets: Sequence) -> tuple[str, list[str]]:
        key = (id(full), tuple(id(t) for t in targets))  # the listings are kept alive above: ids are stable
        if key not in self.versions:
            self.versions[key] = dataset_fingerprint(full, targets)
        return self.versions[key]


PROCESS = Listings()


@dataclasses.dataclass
class TrialData:
    """What one trial reads: the few-shot split of the whole dataset, the shift targets as listed, the
    classes with fewer than K train images (Dassl takes all of theirs), the fingerprints, missing files."""

    fewshot: Any  # DatasetSplits: train and val are the trial's K-shot picks, test the whole test split
    targets: dict[str, Any]  # shift target name -> DatasetSplits
    short: list
    fingerprint: str  # the trial's data (its dataset version plus its picks)
    dataset_fingerprint: str  # the dataset version's, equal across shots and seeds
    missing: list[str]


def read_trial_data(dataset: str, data_root: str | None, shots: int, seed: int, targets: tuple[str, ...] = (),
                    listings: Listings | None = None) -> TrialData:
    """The data a trial uses, from ``listings`` (a fresh read without)."""
    listings = listings or Listings()
    full = listings.read(dataset, data_root)
    train, val, short = fewshot_split(full.train, full.val, shots, seed)
    read_targets = {t: listings.read(t, data_root) for t in targets}
    dataset_fp, missing = listings.version(full, list(read_targets.values()))
    trial_fp, missing_picks = trial_fingerprint(dataset_fp, full, [train, val])
    return TrialData(dataclasses.replace(full, train=train, val=val), read_targets, short, trial_fp, dataset_fp,
                     missing + missing_picks)


def fingerprinted(spec, listings: Listings | None = None, cache_dir: str | None = None):
    """A TrialSpec with the fingerprints of the data it reads and the weights it starts from.

    A listed image that is missing fails here, before any trial starts."""
    data = read_trial_data(spec.dataset, spec.data_root, spec.shots, spec.seed, spec.shift_targets, listings)
    if data.missing:
        raise BenchError(f"image {data.missing[0]} listed in the split is missing ({len(data.missing)} missing in "
                         f"'{spec.dataset}'); restore the dataset's files (`bench data check` lists what is missing)")
    name, weights = resolve(spec.model, spec.pretrained)
    return dataclasses.replace(spec, data_fingerprint=data.fingerprint, dataset_fingerprint=data.dataset_fingerprint,
                               weights_fingerprint=weights_fingerprint(name, weights, cache_dir))


def weights_fingerprint(name: str, weights: str | None, cache_dir: str | None = None) -> str:
    """Identity of starting weights: ``random``, a pretrained tag, or a checkpoint file's SHA-256."""
    if weights in (None, "none", "random"):
        return "random"
    path = Path(weights).expanduser()
    if not path.is_file():
        return f"tag:{name}:{weights}"
    stat = path.stat()
    memo_key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo = Path(cache_dir) / "weights-sha256.json" if cache_dir else None
    known = _read_memo(memo)
    if memo_key not in known:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    h.update(block)
        except OSError as err:
            raise BenchError(f"cannot read weights file {path} ({err.strerror}); check --pretrained") from None
        known[memo_key] = h.hexdigest()
        _write_memo(memo, known)
    return f"sha256:{known[memo_key][:16]}"


def _read_memo(memo: Path | None) -> dict[str, str]:
    try:
        return json.loads(memo.read_text()) if memo is not None and memo.is_file() else {}
    except (OSError, ValueError):
        return {}


def _write_memo(memo: Path | None, known: dict[str, str]) -> None:
    if memo is None:
        return
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(memo, json.dumps(known, sort_keys=True))
    except OSError:
        pass  # only a memo: the hash is recomputed next time
