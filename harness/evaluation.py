"""Scoring a trial's classifier: top-1 on a split (with the predictions kept), and its test-time speed."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch

from .context import TrialContext
from .results import PREDICTION_SCHEMA


class Predictions:
    """Per test image of every set a trial is scored on: its index in the split, true and predicted class.

    ``eval_set`` names the set: ``test`` (the trial's own), ``new`` (base-to-new's new classes) or a
    shift target's dataset name. Kept so that intervals and later analyses need no rerun."""

    SCHEMA = PREDICTION_SCHEMA

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []

    def keeper(self, eval_set: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
        def keep(labels: torch.Tensor, predicted: torch.Tensor) -> None:
            n = len(labels)
            self.parts.append(pa.table({"eval_set": pa.array([eval_set] * n, pa.string()),
                                        "index": pa.array(np.arange(n, dtype=np.int32)),
                                        "label": pa.array(labels.cpu().numpy().astype(np.int32)),
                                        "predicted": pa.array(predicted.cpu().numpy().astype(np.int32))},
                                       schema=self.SCHEMA))
        return keep

    def table(self) -> pa.Table:
        return pa.concat_tables(self.parts) if self.parts else self.SCHEMA.empty_table()


@torch.no_grad()
def evaluate(ctx: TrialContext, split: str, select: Callable = lambda logits: logits,
             keep: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> tuple[float, int]:
    """Top-1 accuracy (percent) of the current classifier on a split, and the split's size.

    ``select`` picks the logit columns that are scored (e.g. a shifted dataset's own classes); ``keep``
    receives the labels and predicted classes, in split order."""
    if not ctx.split(split):
        return float("nan"), 0
    ctx.clf.eval()
    feats = ctx.features(split)[0]
    labels = ctx.labels(split)
    predicted = torch.cat([select(ctx.clf.logits_from_features(f)).argmax(-1) for f in feats.split(500)])
    if keep is not None:
        keep(labels, predicted)
    return 100.0 * int((predicted == labels).sum()) / len(labels), len(labels)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_throughput(ctx: TrialContext, batch_size: int = 100, max_images: int | None = None,
                       split: str = "test") -> dict[str, Any]:
    """Test-time speed of the final classifier: images/s of its real forward (images -> encoder -> every
    slot -> logits) over ``split`` (its first ``max_images``), the feature cache bypassed.

    The process's first measurement warms up on one batch (kernels, allocator), not counted; decoding and
    moving images to the device are not timed either, only the forward passes. Returns the row's ``infer_*``
    columns."""
    items = ctx.split(split)
    n = len(items) if max_images is None else min(len(items), max_images)
    if n == 0:
        return {"infer_images_per_s": None, "infer_batch_size": batch_size, "infer_images": 0}
    clf, device = ctx.clf, ctx.device
    was_training = clf.training
    clf.eval()
    batches = iter(ctx.loader(split, batch_size=batch_size))
    timed, seconds = 0, 0.0

    def forward(images: torch.Tensor) -> float:
        images = images.to(device, non_blocking=True)
        ctx.ledger.forward("timing", len(images))
        _sync(device)
        start = time.perf_counter()
        with ctx.autocast():
            clf(images)
        _sync(device)
        return time.perf_counter() - start

    try:
        warm_key = (ctx.spec.model, str(device), batch_size, ctx.image_size)
        first = None
        if warm_key not in _WARMED:  # once per process: kernels and allocator stay warm for later trials
            first, _ = next(batches)
            forward(first)
            _WARMED.add(warm_key)
        rest = [first] if first is not None and n <= len(first) else []  # a one-batch split: time it again
        for images in rest or (b for b, _ in batches):
            images = images[: n - timed]
            seconds += forward(images)
            timed += len(images)
            if timed >= n:
                break
    finally:
        clf.train(was_training)
    return {"infer_images_per_s": timed / seconds if seconds > 0 else None, "infer_batch_size": batch_size,
            "infer_images": timed}


_WARMED: set = set()  # (model, device, batch size, image size) this process has warmed up


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
