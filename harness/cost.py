"""The cost ledger: what a trial's encoder did, counted as it ran, and the GFLOPs that makes.

Kinds of image-encoder work (images through the encoder):

* ``features``: frozen-encoder passes whose features are kept (``ctx.features``: test, val, cached views);
* ``live``: frozen-encoder passes on freshly augmented batches inside a training loop;
* ``timing``: the inference-speed measurement;
* ``train`` / ``teacher``: a trained encoder's forward passes (the mask step's student, with gradients, and
  its unmasked teacher); ``backward`` counts the passes back through the encoder by kind (the mask step
  runs two with GDR, one without).

GFLOPs: forward images x the encoder's forward GFLOPs per image (``torch.utils.flop_counter`` on one image,
2 FLOPs a multiply-add) + backward images x twice that (the usual convention).
"""
from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any

import torch

_GFLOPS: dict[tuple, float] = {}


class Ledger:
    def __init__(self) -> None:
        self.forwards: collections.Counter = collections.Counter()
        self.backwards: collections.Counter = collections.Counter()

    def forward(self, kind: str, images: int) -> None:
        self.forwards[kind] += int(images)

    def backward(self, kind: str, images: int) -> None:
        self.backwards[kind] += int(images)

    def gflops(self, per_image: float) -> float:
        return per_image * (sum(self.forwards.values()) + 2 * sum(self.backwards.values()))

    def row(self, per_image: float, decoded: int, precision: str) -> dict[str, Any]:
        """The row's ledger columns."""
        return {"images_decoded": int(decoded), "encoder_forward": int(sum(self.forwards.values())),
                "encoder_backward": int(sum(self.backwards.values())),
                "encoder_gflops": self.gflops(per_image),
                "cost": json.dumps({"forward": dict(self.forwards), "backward": dict(self.backwards),
                                    "gflops_per_image": per_image, "precision": precision}, sort_keys=True)}


def encoder_gflops(visual: torch.nn.Module, image_size: int, key: tuple | None = None) -> float:
    """Forward GFLOPs of one image through ``visual`` (counted once per ``key`` and process)."""
    from torch.utils.flop_counter import FlopCounterMode

    if key is not None and key in _GFLOPS:
        return _GFLOPS[key]
    param = next(visual.parameters())
    image = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        visual(image)
    value = counter.get_total_flops() / 1e9
    if key is not None:
        _GFLOPS[key] = value
    return value


# -- planning the work of trials without running them ------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Sizes:
    """A trial's split sizes: the few-shot train and val sets and the test split."""
    train: int
    val: int
    test: int


@dataclasses.dataclass(frozen=True)
class PathSettings:
    """How the data path runs: ``decode_once`` keeps a trial's few-shot images decoded (bench.loading;
    False: every pass decodes every image it reads, as loaders with workers did before); ``test_crops``
    stores a test split's crops after its first whole pass (bench.loading.TestCrops, with a cache folder: once
    for every trial of the comparison; False: every test pass decodes)."""
    decode_once: bool = True
    test_crops: bool = True


class WorkPlan:
    """One trial's encoder work and image decodes as its methods declare them (``Method.plan_work``):
    the counts ``run_trial``'s ledger records when the trial runs (tests/test_precision.py checks them).

    ``done`` holds what earlier trials left in the feature and stage caches (feature passes, learned
    stages) and is updated, so planning trials in order with one set counts shared work once."""

    def __init__(self, spec, sizes: Sizes, done: set, path: PathSettings):
        self.spec, self.done, self.path = spec, done, path
        self.ledger, self.decoded, self._held = Ledger(), 0, set()
        self.n = {"train": sizes.train, "val": sizes.val, "test": sizes.test}
        picks = (spec.dataset, spec.shots, spec.seed)
        self.items = {"train": ("train", *picks), "val": ("val", *picks), "test": ("test", spec.dataset)}
        self.encoder: tuple = ("weights",) + ((spec.seed,) if spec.pretrained in ("random", "none", None) else ())
        self.stage: tuple = self.encoder

    def decode(self, split: str, images: int) -> None:
        """``images`` reads of a split's images: few-shot ones decoded once per trial, a test split once
        (bench.loading)."""
        if split != "test" and self.path.decode_once:
            if split not in self._held:
                self._held.add(split)
                self.decoded += self.n[split]
        elif split == "test" and self.path.test_crops:
            key = ("crops", self.items["test"])
            if key not in self.done:
                if images >= self.n["test"]:  # a whole pass stores the crops (the timing's part does not)
                    self.done.add(key)
                self.decoded += images
        else:
            self.decoded += images

    def features(self, split: str, transform: tuple = ("test",), views: int = 1) -> None:
        """``ctx.features(split, transform, views)``: each pass not cached yet encodes the split once.
        ``transform`` identifies the augmentation and seed stream, e.g. ``("crop", (0.5, 1.0), 30)``."""
        for view in range(views):
            key = ("features", self.encoder, self.items[split], transform, view, self.spec.precision)
            if key not in self.done:
                self.done.add(key)
                self.ledger.forward("features", self.n[split])
                self.decode(split, self.n[split])

    def live(self, split: str, batch: int, epochs: int, drop_last: bool) -> None:
        """The frozen encoder on freshly augmented batches of every epoch (``kind`` live)."""
        images = epochs * epoch_images(self.n[split], batch, drop_last)
        self.ledger.forward("live", images)
        self.decode(split, images)

    def trained_stage(self, batch: int, epochs: int, steps: int | None, backward: int, teacher: bool) -> None:
        """An encoder trained on augmented train batches (``drop_last``), ``steps`` overriding ``epochs``:
        forward ``train`` (+ ``teacher``), ``backward`` passes per image; learned once per stage key, and
        the encoder's features change afterwards."""
        key = ("stage", self.items["train"], self.stage, self.spec.precision)
        if key not in self.done:
            self.done.add(key)
            per_step = epoch_images(self.n["train"], batch, True) // max(epoch_batches(self.n["train"], batch, True), 1)
            total = steps if steps is not None else epochs * epoch_batches(self.n["train"], batch, True)
            images = total * per_step
            self.ledger.forward("train", images)
            self.ledger.backward("train", images * backward)
            if teacher:
                self.ledger.forward("teacher", images)
            self.decode("train", images)
        self.encoder = ("trained", key)

    def evaluation(self) -> None:
        """The harness's own work after the stack: val and test features, the inference timing."""
        self.features("val")
        self.features("test")
        timed = self.spec.infer_images
        if timed != 0:
            timed = self.n["test"] if timed is None else min(self.n["test"], timed)
            self.ledger.forward("timing", timed)
            batch = self.spec.infer_batch_size
            self.decode("test", min(self.n["test"], -(-timed // batch) * batch))  # whole batches are read


def plan_trial(spec, sizes: Sizes, done: set | None = None,
               path: PathSettings = PathSettings()) -> tuple[Ledger, int]:
    """(ledger, images decoded) of ``spec`` on splits of ``sizes``, without running it (see WorkPlan).
    The inference timing's warm-up batch, once per process, is not planned."""
    plan = WorkPlan(spec, sizes, set() if done is None else done, path)
    for plugin, config in spec.resolved.plugins:
        plan.stage = (plan.stage, plugin.name, plugin.version, repr(config))
        plugin.plan_work(config, plan)
    plan.evaluation()
    return plan.ledger, plan.decoded


def epoch_batches(n: int, batch: int, drop_last: bool) -> int:
    return n // batch if (drop_last and n >= batch) else -(-n // batch)


def epoch_images(n: int, batch: int, drop_last: bool) -> int:
    return (n // batch) * batch if (drop_last and n >= batch) else n
