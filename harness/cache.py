"""On-disk caches shared by every trial of every run: encoder features and reusable stages.

Keys are content hashes of everything that determines the cached value (model and weights, encoder
state, the split's files, transform, views, seed), so a change to any of them is a miss. Values are
safetensors and JSON — never pickles — written to a temporary name and renamed, so concurrent trials
can share the cache; a per-key file lock makes a second trial wait for a stage the first is training.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from . import atomic


def default_cache_dir() -> str:
    return str(Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench")).expanduser())


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]


def module_fingerprint(module: torch.nn.Module) -> str:
    """Hash of a module's parameters and buffers (e.g. an encoder after masks were baked in)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def items_fingerprint(items) -> str:
    """Hash of a split's image list: paths, labels, and each file's size and modification time."""
    h = hashlib.sha256()
    for d in items:
        try:
            stat = os.stat(d.path)
            h.update(f"{d.path}|{d.label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{d.path}|{d.label}|missing\n".encode())
    return h.hexdigest()[:32]


def key_lock(path: Path, timeout: float = -1) -> FileLock:
    """The lock of a cache entry: held while a trial reads, writes or trains it, and by ``bench cache
    prune`` while it deletes it (so an entry in use is never deleted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_suffix(".lock"), timeout=timeout)


def note_use(root: Path, run: str | None, entry: Path) -> None:
    """Mark ``entry`` used now (its modification time, what ``--older-than`` reads) and by ``run``
    (``<cache>/runs/<run>.txt``, what ``--run`` reads)."""
    with contextlib.suppress(OSError):
        os.utime(entry)
    if run:
        with contextlib.suppress(OSError):
            (root / "runs").mkdir(parents=True, exist_ok=True)
            with open(root / "runs" / f"{run}.txt", "a") as f:
                f.write(f"{entry.relative_to(root)}\n")


class FeatureCache:
    def __init__(self, root: str | Path, run: str | None = None):
        self.base, self.run = Path(root), run
        self.root = self.base / "features"

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        with key_lock(path):
            if not path.is_file():  # pruned meanwhile
                return None
            features = load_file(path)["features"]
        note_use(self.base, self.run, path)
        return features

    def put(self, key: str, features: torch.Tensor) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with key_lock(path), atomic.writing(path) as tmp:
            save_file({"features": features.contiguous().cpu()}, tmp)
        note_use(self.base, self.run, path)


class StageCache:
    """Folders ``stages/<key>/`` holding a stage's exported state plus ``row.json`` (its fit() output)."""

    def __init__(self, root: str | Path, run: str | None = None):
        self.base, self.run = Path(root), run
        self.root = self.base / "stages"

    def folder(self, key: str) -> Path:
        return self.root / key

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[Path | None]:
        """Yield the stage's folder if it is complete, else None; hold the key's lock meanwhile."""
        folder = self.folder(key)
        with key_lock(folder):
            done = (folder / "row.json").is_file()
            yield folder if done else None
            if folder.is_dir():
                note_use(self.base, self.run, folder)

    def publish(self, key: str, fill) -> Path:
        """Build the stage in a temporary folder with ``fill(tmp)``, then rename it into place."""
        folder = self.folder(key)
        with atomic.folder(folder) as tmp:
            fill(tmp)
        note_use(self.base, self.run, folder)
        return folder


# -- what the cache holds, and pruning it -------------------------------------------------------------------
def entries(root: str | Path) -> list[tuple[str, Path, int, float]]:
    """(kind, path, bytes, last used) of every entry: a feature file, a split's test crops
    (bench.loading.TestCrops), or a stage folder."""
    root = Path(root)
    out = []
    for kind, pattern in (("features", "features/*/*.safetensors"), ("crops", "crops/*/[!.]*.npy")):
        for path in sorted(root.glob(pattern)):
            with contextlib.suppress(OSError):
                st = path.stat()
                out.append((kind, path, st.st_size, st.st_mtime))
    for path in sorted((root / "stages").glob("*")):
        if path.is_dir() and not path.name.startswith(atomic.TEMP_PREFIX):
            with contextlib.suppress(OSError):
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                out.append(("stages", path, size, path.stat().st_mtime))
    return out


def runs_using(root: str | Path) -> dict[str, set[str]]:
    """Entry (relative path) -> the runs that used it, from ``<cache>/runs/*.txt``."""
    users: dict[str, set[str]] = {}
    for record in sorted((Path(root) / "runs").glob("*.txt")):
        for line in record.read_text().splitlines():
            users.setdefault(line.strip(), set()).add(record.stem)
    return users


def prune(root: str | Path, older_than_s: float | None = None, run: str | None = None,
          now: float | None = None) -> tuple[int, int, int]:
    """Delete the entries last used more than ``older_than_s`` seconds ago and/or used by ``run`` and by no
    other run; an entry whose lock another process holds (in use) is kept. Returns (deleted, bytes, kept
    because in use)."""
    import time

    root = Path(root)
    now = time.time() if now is None else now
    users = runs_using(root) if run else {}
    deleted = freed = busy = 0
    for kind, path, size, used in entries(root):
        rel = str(path.relative_to(root))
        if older_than_s is not None and now - used <= older_than_s:
            continue
        if run is not None and users.get(rel) != {run}:
            continue
        try:
            with key_lock(path, timeout=0):
                if kind == "stages":
                    shutil.rmtree(path)
                else:
                    path.unlink()
        except TimeoutError:  # filelock.Timeout: a trial holds it
            busy += 1
            continue
        except FileNotFoundError:
            continue
        with contextlib.suppress(OSError):
            path.with_suffix(".lock").unlink()
        deleted, freed = deleted + 1, freed + size
    if run is not None:
        with contextlib.suppress(OSError):
            (root / "runs" / f"{run}.txt").unlink()
    return deleted, freed, busy


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``45m``, ``90s`` (or plain seconds) -> seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    text = text.strip().lower()
    try:
        return float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        from .errors import BenchError

        raise BenchError(f"--older-than must be an age such as 30d, 12h or 45m, got '{text}'") from None
