"""Small helpers shared by the trained methods: the epoch loop, CoOp's schedule and epoch table, batching,
precision.

Not a plugin (no entry point); method modules import it instead of each other.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Callable, Iterable, Iterator

import torch

from bench import BenchError
from bench.plugin import AtLeastOne, NonNegative, Positive, Range, Search


@dataclasses.dataclass
class DasslSGDConfig:
    """Dassl's SGD recipe that CoOp and CLIP-Adapter share: epochs by shots (set in ``defaults_for``), SGD
    with momentum and weight decay, one warm-up epoch at a constant rate, RandomResizedCrop + flip."""

    epochs: Annotated[int, AtLeastOne] = 200  # set by shots in defaults_for
    batch_size: Annotated[int, AtLeastOne] = 32
    lr: Annotated[float, Positive, Search(low=2e-4, high=2e-2, log=True)] = 0.002  # a decade either side
    momentum: Annotated[float, Range(0, 1)] = 0.9
    weight_decay: Annotated[float, NonNegative] = 5e-4
    warmup_epochs: Annotated[int, NonNegative] = 1
    warmup_lr: Annotated[float, NonNegative] = 1e-5
    crop_scale: Annotated[tuple[float, float], Range(0, 1, min_exclusive=True)] = (0.08, 1.0)

# CoOp's epochs by shots (COOP.md; configs *_ep50, *_ep100, rn50/vit_b16); ImageNet always 50.
COOP_EPOCHS = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}


def coop_epochs(dataset: str, shots: int) -> int:
    """CoOp's epoch count for a dataset and shot count (shots between table entries round down)."""
    if dataset == "imagenet":
        return 50
    known = [k for k in sorted(COOP_EPOCHS) if k <= shots]
    return COOP_EPOCHS[known[-1]] if known else COOP_EPOCHS[1]


def warmup_cosine(optimizer: torch.optim.Optimizer, max_epoch: int, warmup_epochs: int = 1,
                  warmup_lr: float = 1e-5) -> torch.optim.lr_scheduler.LambdaLR:
    """Dassl's constant warm-up + cosine, as CoOp runs it: stepped once per epoch, from the optimizer's lr.

    During the warm-up the rate is ``warmup_lr``; afterwards the cosine over ``max_epoch`` epochs is
    shifted by the warm-up, so it never reaches 0: ``lr * 0.5 * (1 + cos(pi * (e - w) / max_epoch))``.
    """
    base_lr = optimizer.param_groups[0]["lr"]

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return warmup_lr / base_lr
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / max_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_epochs(epochs: int, epoch_batches: Callable[[int], Iterable[tuple]], step: Callable[..., float], *,
                 scheduler=None, per_batch: bool = False, max_steps: int | None = None,
                 after_epoch: Callable[[int], None] | None = None,
                 val_report: Callable[[int], None] | None = None,
                 report: tuple[Callable[[str], None], str, int] | None = None,
                 detail: Callable[[], str] = lambda: "") -> float:
    """The trained methods' epoch loop; returns the last epoch's mean loss.

    ``step(*batch)`` trains on one batch and returns its loss; ``scheduler`` is stepped after every
    epoch, or after every batch with ``per_batch``; ``max_steps`` ends training after that many batches
    in all; ``after_epoch(epoch)`` runs at the end of each epoch (e.g. a selection on validation data), then
    ``val_report(epoch)`` (``ctx.report_epoch``: a search's early stopping listens to it).
    ``report = (progress, name, every)`` writes a status line every ``every`` epochs and after the
    last, with ``detail()`` appended.
    """
    mean, done = float("nan"), 0
    for epoch in range(epochs):
        losses = []
        for batch in epoch_batches(epoch):
            if max_steps is not None and done >= max_steps:
                break
            losses.append(step(*batch))
            done += 1
            if scheduler is not None and per_batch:
                scheduler.step()
        if scheduler is not None and not per_batch:
            scheduler.step()
        mean = epoch_mean(losses)
        if after_epoch is not None:
            after_epoch(epoch)
        if val_report is not None:
            val_report(epoch)
        if report is not None:
            progress, name, every = report
            if (epoch + 1) % every == 0 or epoch + 1 == epochs:
                progress(f"{name} epoch {epoch + 1}/{epochs} loss {mean:.4f}{detail()}")
    return mean


def epoch_mean(losses: list) -> float:
    """The mean of an epoch's step losses (floats or 0-d tensors), read from the device once."""
    tensors = [v for v in losses if isinstance(v, torch.Tensor)]
    read = iter(torch.stack([t.detach().reshape(()) for t in tensors]).double().tolist()) if tensors else iter(())
    values = [next(read) if isinstance(v, torch.Tensor) else float(v) for v in losses]
    return sum(values) / max(len(values), 1)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, scaler=None) -> torch.Tensor:
    """Back-propagate ``loss`` and step (through ``scaler``, a ``GradScaler``, when given); the detached
    loss, left on the device (:func:`train_epochs` reads an epoch's losses at once: no sync per step)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()


def batches(n: int, batch_size: int, generator: torch.Generator, shuffle: bool = True,
            drop_last: bool = True) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` samples; like Dassl, ``drop_last`` only applies when ``n`` fills a batch."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    drop = drop_last and n >= batch_size
    stop = (n // batch_size) * batch_size if drop else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def n_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    return n // batch_size if (drop_last and n >= batch_size) else math.ceil(n / batch_size)


def resolve_precision(precision: str, device: torch.device, name: str) -> str:
    """``auto`` is fp16 on CUDA (as the official codes) and fp32 elsewhere; fp16 needs CUDA; ``amp``
    (autocast) runs on the trial's device in :func:`amp_dtype`."""
    choices = ("auto", "fp16", "fp32", "amp")
    if precision not in choices:
        raise BenchError(f"bad value {precision!r} for '{name}.precision': choose one of {', '.join(choices)}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise BenchError(f"{name}.precision={precision} needs a CUDA device; use {name}.precision=fp32 on CPU")
    return precision


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype of ``precision=amp``: fp16 on CUDA (with loss scaling), bf16 elsewhere (CPU
    autocast's type; no loss scaling needed)."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def view_for_epoch(epoch: int, views: int) -> int:
    """Which cached augmented view an epoch trains on (cycled when there are fewer views than epochs)."""
    return epoch % views


def train_feature_batches(clf, ctx, transform, batch_size: int, generator: torch.Generator,
                          views: int | None, stream: int = 0, drop_last: bool = True):
    """A function ``epoch -> iterator of (encoder features, labels)`` over the augmented train split.

    ``views=None`` runs the frozen encoder on freshly augmented images every epoch (the official
    loops); ``views=V`` encodes V augmented passes once (``ctx.features``, cached within the trial) and
    epoch ``e`` trains on pass ``e % V``. Features are the encoder's, before any installed adapter.
    """
    if views is None:
        loader = ctx.loader("train", transform, batch_size=batch_size, shuffle=True, drop_last=drop_last,
                            generator=generator)

        def live(epoch: int):
            for images, labels in loader:
                with torch.no_grad():
                    feats = ctx.encode_images(images, kind="live")
                yield feats, labels.to(ctx.device)
        return live

    cached = ctx.features("train", transform, views=views, stream=stream)
    labels = ctx.labels("train")

    def from_cache(epoch: int):
        feats = cached[view_for_epoch(epoch, views)]
        for idx in batches(len(labels), batch_size, generator, drop_last=drop_last):
            yield feats[idx.to(feats.device)], labels[idx.to(labels.device)]
    return from_cache
