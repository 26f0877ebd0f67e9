"""The loader of one ``mask`` fit: today's (a DataLoader rebuilt per pass, workers seeded by the host,
every JPEG decoded every epoch, float32 batches) vs bench's (bench.loading: one persistent loader, images
decoded once, crops drawn in the main process, uint8 batches normalised after the copy).

Fixtures written by the script: ``--classes`` x 16 JPEGs of 500x375 px (quality 90), cropped with the
mask plugin's RandomResizedCrop(0.5-1) + flip to 224 px, batch 32, ``--epochs`` epochs (the mask plugin's
default 30), with the workers each rule gives a 2-CPU trial (the old ``min(8, cpus // 2)``: 1; the new, one per
trial CPU: 2), on the CPU (the device copy is then a no-op). Both loaders' batches are consumed and nothing else runs.

Before timing, the new loader's batches with 1 and 2 workers are checked bit for bit against a 0-worker
reference of the old loader (same seeds): the script stops if any differs.
The two fits are timed ``--repeats`` times (default 3), alternated (today's, bench's, today's, ...) so that
load from other work hits both alike; the ratio is of the medians. Each fit's CPU seconds (the process and
its workers) are printed too: on a machine shared with other work they say how much less work bench's
loader does even when the wall times are dominated by waiting for a core.
Run from the repository root (~2-4 min on 2 cores): ``python benchmarks/data_path.py [--epochs 30]``.
Last line: ``data_path speedup: <today's median seconds / bench's median seconds>x``.
"""
from __future__ import annotations

import argparse
import gc
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bench.context import ImageList
from bench.data.splits import Datum
from bench.data.transforms import train_transform
from bench.loading import DecodedImages, device_batches

SIZE, BATCH = 224, 32


def write_fixtures(folder: Path, classes: int, per_class: int = 16) -> list[Datum]:
    rng = np.random.default_rng(0)
    items = []
    for c in range(classes):
        for i in range(per_class):
            coarse = rng.integers(0, 255, (47, 63, 3))
            image = np.kron(coarse, np.ones((8, 8, 1)))[:375, :500] + rng.integers(0, 20, (375, 500, 3))
            path = folder / f"c{c}_{i}.jpg"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
            items.append(Datum(path=str(path), label=c, classname=f"c{c}"))
    return items


def old_loader(items, workers: int):
    """Today's: one DataLoader per fit iterated every epoch, workers restarted each epoch, no decoded cache
    with workers, float32 batches."""
    return DataLoader(ImageList(items, train_transform(SIZE, (0.5, 1.0)), {} if not workers else None),
                      batch_size=BATCH, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(11),
                      num_workers=workers, persistent_workers=False)


def new_loader(items, workers: int):
    images = DecodedImages()
    images.fill([d.path for d in items], threads=max(1, workers))
    return device_batches(items, train_transform(SIZE, (0.5, 1.0)), images, device=torch.device("cpu"),
                          mean=train_transform(SIZE, (0.5, 1.0)).mean, std=train_transform(SIZE, (0.5, 1.0)).std,
                          batch_size=BATCH, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(11), workers=workers)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its ended (waited-for) children, the workers."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def epochs_of(make, epochs: int, cpu: list | None = None) -> tuple[float, list[torch.Tensor]]:
    torch.manual_seed(3)
    cpu_start, start = cpu_seconds(), time.perf_counter()
    loader = make()  # building it (and decoding, for the new one) is part of the fit's time
    batches = [images for _ in range(epochs) for images, _ in loader]
    del loader  # the persistent workers end here (and are counted), as a fit's do when it ends
    gc.collect()
    wall = time.perf_counter() - start
    if cpu is not None:
        cpu.append(cpu_seconds() - cpu_start)
    return wall, batches


def main(argv=None) -> float:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--check-epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        items = write_fixtures(Path(tmp), args.classes)
        _, reference = epochs_of(lambda: old_loader(items, 0), args.check_epochs)
        for workers in (0, 1, 2):
            _, got = epochs_of(lambda: new_loader(items, workers), args.check_epochs)
            if len(got) != len(reference) or not all(torch.equal(a, b) for a, b in zip(got, reference)):
                raise SystemExit(f"data_path: batches with {workers} workers differ from the 0-worker reference")
        print(f"batches bitwise equal to the 0-worker reference with 0, 1 and 2 workers "
              f"({args.check_epochs} epochs of {len(reference) // args.check_epochs} batches)")
        olds, news, old_cpu, new_cpu = [], [], [], []
        for round_ in range(args.repeats):
            old_s, old = epochs_of(lambda: old_loader(items, 1), args.epochs, old_cpu)
            new_s, new = epochs_of(lambda: new_loader(items, 2), args.epochs, new_cpu)
            assert len(old) == len(new)
            olds.append(old_s)
            news.append(new_s)
            print(f"round {round_ + 1}: today's {old_s:.1f} s ({old_cpu[-1]:.1f} CPU s), bench's {new_s:.1f} s "
                  f"({new_cpu[-1]:.1f} CPU s): {old_s / new_s:.2f}x")
        old_s, new_s = float(np.median(olds)), float(np.median(news))
        n = len(new) * BATCH
        print(f"today's loader: {old_s:.1f} s ({n / old_s:.0f} images/s); bench's: {new_s:.1f} s "
              f"({n / new_s:.0f} images/s); medians of {args.repeats}; {args.epochs} epochs of {len(items)} "
              "images, 1 worker vs 2")
        print(f"CPU seconds (all processes; less sensitive to other load than wall time): today's "
              f"{np.median(old_cpu):.1f}, bench's {np.median(new_cpu):.1f} "
              f"({np.median(old_cpu) / np.median(new_cpu):.2f}x less work)")
    speedup = old_s / new_s
    print(f"data_path speedup: {speedup:.2f}x")
    return speedup


if __name__ == "__main__":
    main()
