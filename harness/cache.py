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
import uuid
from pathlib import Path
from typing import Any, Iterator

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file


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


def key_lock(path: Path) -> FileLock:
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_suffix(".lock"))


class FeatureCache:
    def __init__(self, root: str | Path):
        self.root = Path(root) / "features"

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        return load_file(path)["features"] if path.is_file() else None

    def put(self, key: str, features: torch.Tensor) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
        save_file({"features": features.contiguous().cpu()}, str(tmp))
        os.replace(tmp, path)


class StageCache:
    """Folders ``stages/<key>/`` holding a stage's exported state plus ``row.json`` (its fit() output)."""

    def __init__(self, root: str | Path):
        self.root = Path(root) / "stages"

    def folder(self, key: str) -> Path:
        return self.root / key

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[Path | None]:
        """Yield the stage's folder if it is complete, else None; hold the key's lock meanwhile."""
        folder = self.folder(key)
        with key_lock(folder):
            yield folder if (folder / "row.json").is_file() else None

    def publish(self, key: str, fill) -> Path:
        """Build the stage in a temporary folder with ``fill(tmp)``, then rename it into place."""
        folder = self.folder(key)
        tmp = folder.with_name(f".tmp-{key}-{uuid.uuid4().hex}")
        tmp.mkdir(parents=True)
        try:
            fill(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder
