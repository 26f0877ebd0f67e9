"""The image path from files to the device: decode once, crop in workers, ship uint8, normalise on the device.

* :class:`DecodedImages` keeps a trial's few-shot images decoded (uint8), up to a budget
  (``BENCH_DECODED_MB``, default 4096 MB: 16 shots of ImageNet's 1,000 classes at ~500x400 px take ~9.6 GB
  and then only the first ~40 % stay decoded; every other few-shot set fits). Images past the budget are
  decoded on access, as every test image is.
* Every random parameter of a batch is drawn in the main process, in sample order, from torch's global
  generator — the very draws the transform would make when called in one process — so a trial's batches
  are the same bit for bit with 0, 1 or many workers, and the same as before workers could exist.
  A transform that is not a :class:`~bench.data.transforms.CropThenNormalise` gets a seed per sample,
  drawn the same way, and runs under it in whichever process fetches the sample.
* A batch is handed to the workers in parts (at least ``MIN_CHUNK`` images each), joined again in order in
  the main process: a few-shot epoch of one or two batches keeps every worker busy.
* Workers return uint8 crops (a quarter of float32's bytes through shared memory); :class:`DeviceBatches`
  copies them to the device (pinned, non-blocking) and normalises there.
* :class:`TestCrops` keeps the crops of a split under a deterministic transform (the test transform: resize,
  center crop) as uint8, so a split is decoded and cropped once and every later pass reads the very same
  bytes (see its docstring for where and how much).
"""
from __future__ import annotations

import contextlib
import os
import random
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from .atomic import temp_path
from .data.splits import Datum
from .data.transforms import CropThenNormalise, normalise
from .errors import BenchError

DECODED_BUDGET_MB = 4096
TEST_CROPS_MB = 2048


def decoded_budget_bytes() -> int:
    return int(float(os.environ.get("BENCH_DECODED_MB", DECODED_BUDGET_MB)) * 2**20)


def test_crops_budget_bytes() -> int:
    return int(float(os.environ.get("BENCH_TEST_CROPS_MB", TEST_CROPS_MB)) * 2**20)


def open_rgb(path: str) -> Image.Image:
    """The image file as RGB; a missing or damaged file is a one-line BenchError (it fails its trial)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise BenchError(f"image {path} listed in the split is missing; restore the dataset's files "
                         "(`bench data check` lists what is missing)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        # A damaged file fails its trial rather than being skipped: skipping would change the split.
        raise BenchError(f"corrupt image file {path} ({type(err).__name__}); replace it with a good "
                         "copy from the dataset's source") from None


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding it."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError):
        return open_rgb(path).size  # raises the one-line error


class DecodedImages:
    """Decoded RGB images (PIL, 8 bits a channel) of a trial, by path, up to ``budget`` bytes in all.

    Forked workers see them without copying. ``decoded`` counts the decodes made here and the reads of
    images not held (decoded where they are read)."""

    def __init__(self, budget: int | None = None):
        self.budget = decoded_budget_bytes() if budget is None else budget
        self.held: dict[str, Image.Image] = {}
        self.sizes: dict[str, tuple[int, int]] = {}
        self.used = 0
        self.decoded = 0

    def fill(self, paths: Sequence[str], threads: int = 1) -> None:
        """Decode the paths not held yet (PIL releases the GIL while decoding: threads run in parallel)."""
        todo = [p for p in dict.fromkeys(paths) if p not in self.held and p not in self.sizes]
        if not todo:
            return
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for path, image in zip(todo, pool.map(open_rgb, todo)):
                self.decoded += 1
                self.sizes[path] = image.size
                nbytes = image.width * image.height * 3
                if self.used + nbytes <= self.budget:
                    self.held[path] = image
                    self.used += nbytes

    def size(self, path: str) -> tuple[int, int]:
        if path not in self.sizes:
            self.sizes[path] = image_size(path)
        return self.sizes[path]

    def image(self, path: str) -> Image.Image:
        image = self.held.get(path)
        return image if image is not None else open_rgb(path)


class Crops(Dataset):
    """Worker side: sample ``(index, drawn, ends)`` -> (image, label, ends); the image is a uint8 crop for a
    CropThenNormalise (``drawn``: its parameters), else the transform's output under seed ``drawn``;
    ``ends`` marks the last sample of a batch (:class:`JoinedChunks`)."""

    def __init__(self, items: Sequence[Datum], transform: Callable, images: DecodedImages):
        self.items, self.transform, self.images = list(items), transform, images

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        index, drawn, ends = key
        d = self.items[index]
        image = self.images.image(d.path)
        if isinstance(self.transform, CropThenNormalise):
            return self.transform.to_uint8(image, drawn), d.label, ends
        torch.manual_seed(drawn)
        random.seed(drawn)
        return self.transform(image), d.label, ends


class DrawnBatches(Sampler):
    """Main side: each epoch's index batches, every sample paired with its draws, all drawn at the epoch's
    start in sample order (so nothing a worker does, or when, can change them)."""

    def __init__(self, batches: BatchSampler, items: Sequence[Datum], transform: Callable, images: DecodedImages,
                 chunks: int = 1):
        self.batches, self.items, self.transform, self.images = batches, items, transform, images
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        # A generator: nothing is drawn until the first batch is asked for (a DataLoader with workers calls
        # iter() twice on its first epoch), then the whole epoch at once.
        epoch = list(self.batches)
        held = self.images.held
        if isinstance(self.transform, CropThenNormalise) and not self.transform.random:
            def draw(i):
                return ()
        elif isinstance(self.transform, CropThenNormalise):
            def draw(i):
                return self.transform.draw(*self.images.size(self.items[i].path))
        else:
            def draw(i):
                return int(torch.randint(0, 2**62, (1,)))
        for batch in [[(i, draw(i)) for i in batch] for batch in epoch]:
            self.images.decoded += sum(self.items[i].path not in held for i, _ in batch)  # fetched undecoded
            # A batch goes to the workers in up to ``chunks`` consecutive parts, each cropped by whichever
            # worker is free: a small few-shot epoch (1-shot DTD: one batch) keeps every worker busy rather
            # than one, and no worker idles at an epoch's end while another crops a whole last batch.
            n = len(batch)
            c = max(1, min(self.chunks, n // MIN_CHUNK))
            for k in range(c):
                part = batch[k * n // c: (k + 1) * n // c]
                yield [(i, drawn, k == c - 1 and j == len(part) - 1) for j, (i, drawn) in enumerate(part)]


MIN_CHUNK = 8  # images a worker crops at least at a time (fewer: the hand-over costs more than it spreads)


class JoinedChunks:
    """The loader's parts of a batch (:class:`DrawnBatches`) joined again, in order: (images, labels)."""

    def __init__(self, loader: DataLoader, batches: int, pin: bool):
        self.loader, self.batches, self.pin = loader, batches, pin

    def __len__(self) -> int:
        return self.batches


    def __iter__(self):
        parts: list = []
        for images, labels, ends in self.loader:
            parts.append((images, labels))
            if not bool(ends[-1]):
                continue
            if len(parts) == 1:
                images, labels = parts[0]
            else:
                images = torch.cat([p[0] for p in parts], out=torch.empty(
                    (sum(len(p[0]) for p in parts), *parts[0][0].shape[1:]), dtype=parts[0][0].dtype,
                    pin_memory=self.pin))
                labels = torch.cat([p[1] for p in parts])
            parts = []
            yield images, labels


class DeviceBatches:
    """Batches (images, labels) on ``device``: uint8 crops normalised there, any other batch moved as is.

    Iterating it once is one pass (an epoch); the loader's workers persist between passes."""

    def __init__(self, loader: DataLoader, device: torch.device, mean, std, generator: torch.Generator | None,
                 on_batch: Callable[[int], None] = lambda n: None):
        self.loader, self.device, self.mean, self.std = loader, device, mean, std
        self.generator, self.on_batch = generator, on_batch

    def __len__(self) -> int:
        return len(self.loader)


    def __iter__(self):
        # The draw a DataLoader makes when an epoch starts (its workers' base seed): made here, once per
        # pass, so the generators advance alike whether the loader's workers persist or not.
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        for images, labels in self.loader:
            self.on_batch(len(labels))
            images = images.to(self.device, non_blocking=True)
            if images.dtype == torch.uint8:
                images = normalise(images, self.mean, self.std)
            yield images, labels.to(self.device, non_blocking=True)


def device_batches(items: Sequence[Datum], transform: Callable, images: DecodedImages, *, device: torch.device,
                   mean, std, batch_size: int, shuffle: bool, drop_last: bool, generator: torch.Generator | None,
                   workers: int, on_batch: Callable[[int], None] = lambda n: None,
                   crops: tuple[TestCrops, str] | None = None) -> DeviceBatches:
    """One persistent loader over ``items`` (see the module docstring).

    ``crops`` (a store and the split's key, for a deterministic transform read in order): a pass reads the
    stored crops when the store has them, else decodes and crops as usual and stores what a whole pass made."""
    pin = device.type == "cuda"
    if crops is not None and not shuffle and not drop_last:
        store, key = crops
        stored = store.get(key, len(items))
        if stored is not None:
            return DeviceBatches(StoredCrops(stored, [d.label for d in items], batch_size, pin), device, mean, std,
                                 generator, on_batch)
    order = RandomSampler(items, generator=generator) if shuffle else SequentialSampler(items)
    batches = DrawnBatches(BatchSampler(order, batch_size, drop_last), items, transform, images, chunks=workers)
    loader = JoinedChunks(DataLoader(Crops(items, transform, images), batch_sampler=batches, num_workers=workers,
                                     pin_memory=pin, persistent_workers=workers > 0,
                                     prefetch_factor=PREFETCH if workers else None, generator=torch.Generator()),
                          len(batches), pin)
    if crops is not None and not shuffle and not drop_last:
        loader = FillingCrops(loader, len(items), *crops)
    return DeviceBatches(loader, device, mean, std, generator, on_batch)


class TestCrops:
    """The uint8 crops [N, 3, S, S] of whole splits under a deterministic transform, by key (the split's
    items fingerprint, the image size and the transform's steps: :meth:`key`).

    With a cache folder (``root``: the feature cache's) they are files ``<root>/crops/<kk>/<key>.npy``,
    written once by the first whole pass over the split and read by every later pass of every trial and
    process as a memory map: the operating system's page cache holds them once for all the trial processes
    of a machine, and `bench cache` lists and prunes them (kind ``crops``). A 224 px crop is 147 KiB: the
    fewshot11 test splits (133,694 images) take 18.7 GiB of disk, ImageNet's 50,000 7.0 GiB, DTD's 1,692
    0.24 GiB. Without a cache folder (``--no-cache``) they are kept in the trial's memory only, up to
    ``budget`` bytes (``BENCH_TEST_CROPS_MB``, default 2048 MB: about 14,200 crops at 224 px, every fewshot11
    test split but ImageNet's, Food101's and SUN397's), which saves the inference timing's decodes.

    A pass that reads the stored crops decodes nothing; the crops are the bytes the transform makes
    (:meth:`~bench.data.transforms.CropThenNormalise.to_uint8`), so batches are the same bit for bit."""

    def __init__(self, root: str | Path | None = None, run: str | None = None, budget: int | None = None):
        self.base = None if root is None else Path(root)
        self.run = run
        self.budget = test_crops_budget_bytes() if budget is None else budget
        self.memory: OrderedDict[str, torch.Tensor] = OrderedDict()

    @staticmethod
    def key(items_id: str, image_size: int, transform) -> str:
        from .cache import digest

        steps = [repr(step) for step in getattr(transform, "geometric", [transform])]
        return digest({"kind": "test-crops", "items": items_id, "size": image_size, "steps": steps})

    def path(self, key: str) -> Path | None:
        return None if self.base is None else self.base / "crops" / key[:2] / f"{key}.npy"

    def get(self, key: str, n: int):
        """The stored crops (a tensor, or a read-only array mapped from the file) of ``n`` images, or None."""
        if key in self.memory:
            self.memory.move_to_end(key)
            return self.memory[key]
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        from .cache import key_lock, note_use

        with key_lock(path):
            try:
                crops = np.load(path, mmap_mode="r")  # stays readable even if pruned later (POSIX)
            except (OSError, ValueError):
                return None
        if crops.dtype != np.uint8 or crops.ndim != 4 or len(crops) != n:
            return None
        note_use(self.base, self.run, path)
        return crops

    def sink(self, key: str, n: int, shape: tuple[int, ...]) -> "CropSink | None":
        """Where a whole pass writes its crops: a temporary file, or the trial's memory while within budget."""
        nbytes = n * int(np.prod(shape))
        path = self.path(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_path(path)
            return CropSink(np.lib.format.open_memmap(tmp, "w+", np.uint8, (n, *shape)), self, key, tmp)
        if nbytes > self.budget:
            return None
        while self.memory and sum(t.nbytes for t in self.memory.values()) + nbytes > self.budget:
            self.memory.popitem(last=False)  # the least recently read split goes first
        return CropSink(torch.empty((n, *shape), dtype=torch.uint8), self, key, None)


class CropSink:
    """One pass's crops as they come; :meth:`commit` publishes them once the pass covered the whole split."""

    def __init__(self, array, store: TestCrops, key: str, tmp: Path | None):
        self.array, self.store, self.key, self.tmp = array, store, key, tmp

    def write(self, offset: int, images: torch.Tensor) -> None:
        if self.tmp is None:
            self.array[offset: offset + len(images)] = images
        else:
            self.array[offset: offset + len(images)] = images.numpy()

    def commit(self) -> None:
        if self.tmp is None:
            self.store.memory[self.key] = self.array
            return
        from .cache import key_lock, note_use

        self.array.flush()
        del self.array
        path = self.store.path(self.key)
        with key_lock(path):
            os.replace(self.tmp, path)
        note_use(self.store.base, self.store.run, path)

    def discard(self) -> None:
        if self.tmp is not None:
            self.array = None
            with contextlib.suppress(OSError):
                self.tmp.unlink()


class FillingCrops:
    """A loader's pass that also hands its uint8 batches to a :class:`CropSink`, committed when the pass
    read the whole split (a pass abandoned early, as the inference timing's, stores nothing)."""

    def __init__(self, loader, n: int, store: TestCrops, key: str):
        self.loader, self.n, self.store, self.key = loader, n, store, key

    def __len__(self) -> int:
        return len(self.loader)


    def __iter__(self):
        sink, offset, whole = None, 0, False
        try:
            for images, labels in self.loader:
                if images.dtype != torch.uint8:
                    sink = False  # not crops: nothing to keep
                if sink is None and offset == 0:
                    sink = self.store.sink(self.key, self.n, tuple(images.shape[1:])) or False
                if sink:
                    sink.write(offset, images)
                offset += len(images)
                yield images, labels
            whole = offset == self.n
        finally:
            if sink:
                sink.commit() if whole else sink.discard()


class StoredCrops:
    """A pass over stored crops, in split order, as the loader's (uint8 images, labels) batches."""

    def __init__(self, crops, labels: list[int], batch_size: int, pin: bool):
        self.crops, self.labels, self.batch_size, self.pin = crops, torch.tensor(labels), batch_size, pin

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)


    def __iter__(self):
        for start in range(0, len(self.labels), self.batch_size):
            part = self.crops[start: start + self.batch_size]
            images = part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))  # off the map
            yield (images.pin_memory() if self.pin else images), self.labels[start: start + self.batch_size]


PREFETCH = 2  # batches each worker prepares ahead


def shm_bytes_needed(workers: int, batch_size: int, image_size: int) -> int:
    """/dev/shm a trial's loader can hold at once: every worker's prefetched uint8 batches (plus one)."""
    return (workers * PREFETCH + 1) * batch_size * 3 * image_size * image_size


def shm_free_bytes(path: str = "/dev/shm") -> int | None:
    """Free bytes of the shared-memory mount workers hand batches through (None: no such mount)."""
    import shutil

    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def check_shm(specs, cpus_per_trial: float, free: int | None = None) -> None:
    """A one-line BenchError, before any trial starts, when /dev/shm cannot hold one CUDA trial's batches
    in flight (a container's default 64 MB makes every worker die with a bus error instead)."""
    workers = int(cpus_per_trial) if int(cpus_per_trial) > 1 else 0  # as bench.trial.loader_workers
    cuda = [s for s in specs if s.device == "cuda"]
    if not cuda or not workers:
        return
    free = shm_free_bytes() if free is None else free
    if free is None:
        return
    batch = max(max((getattr(c, "batch_size", 0) for _, c in s.resolved.plugins), default=0) for s in cuda)
    batch = max(batch, 100, *(s.infer_batch_size for s in cuda))
    need = shm_bytes_needed(workers, batch, max(_image_size(s.model) for s in cuda))
    if free < need:
        raise BenchError(f"/dev/shm has {free / 2**20:.0f} MB free but a trial's {workers} loader workers need "
                         f"about {need / 2**20:.0f} MB; start the container with --shm-size={_gb(need)}g or "
                         "--ipc=host, or run with --cpus-per-trial 1 (no workers)")


def _gb(n: int) -> int:
    return max(1, -(-2 * n // 2**30))  # twice the need, in whole GB


def _image_size(model: str) -> int:
    import open_clip

    cfg = open_clip.get_model_config(model) or {}
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)
