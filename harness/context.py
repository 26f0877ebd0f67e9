"""TrialContext: what a method sees of its trial — data, loaders, transforms, cached features."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from .cache import FeatureCache, digest, items_fingerprint
from .cost import Ledger
from .data import transforms as T
from .data.splits import DatasetSplits, Datum
from .loading import DecodedImages, DeviceBatches, TestCrops, device_batches, open_rgb
from .precision import autocast


class ImageList(Dataset):
    """Images of a split, decoded on access; ``decoded`` (a dict) keeps decoded images for reuse."""

    def __init__(self, items: Sequence[Datum], transform: Callable, decoded: dict | None = None):
        self.items, self.transform, self.decoded = list(items), transform, decoded

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        d = self.items[i]
        if self.decoded is not None and d.path in self.decoded:
            return self.transform(self.decoded[d.path]), d.label
        image = open_rgb(d.path)
        if self.decoded is not None:
            self.decoded[d.path] = image
        return self.transform(image), d.label


PROMPTS_PER_PASS = 8192  # text_weights encodes up to this many prompts at once (ImageNet's 7-prompt ensemble: 7000)


def prompt_classname(name: str) -> str:
    return name.replace("_", " ")


@dataclasses.dataclass
class TrialContext:
    spec: object  # TrialSpec
    clf: torch.nn.Module  # ClipClassifier
    tokenizer: Callable
    data: DatasetSplits  # what the trial trains and is scored on (the protocol's part of ``read.fewshot``)
    device: torch.device
    image_size: int
    mean: tuple = T.OPENAI_MEAN
    std: tuple = T.OPENAI_STD
    read: object = None  # bench.fingerprint.TrialData: everything the trial read, for a protocol's other sets
    progress: Callable[[str], None] = lambda msg: None  # short status lines for long fits
    artifact_dir: Path | None = None  # where a method may save files (e.g. learned masks); None: nowhere
    short_classes: int = 0  # classes with fewer than K train images (all of them are used)
    encoder_id: str = ""  # identity of the encoder's weights; the harness updates it after an encoder stage
    cache: FeatureCache | None = None  # features shared across trials and runs (None: within the trial only)
    epoch_listener: Callable[[int, float], None] | None = None  # a search's early stopping: (epoch, val top-1)
    num_workers: int = 0  # image-cropping worker processes (0 on CPU; on GPU from the trial's CPUs)
    precision: str = "fp32"  # bench.precision: the encoder's passes run under ``autocast()``
    ledger: Ledger = dataclasses.field(default_factory=Ledger)  # the trial's encoder work, counted
    images: DecodedImages = dataclasses.field(default_factory=DecodedImages)  # few-shot images, decoded once
    other_images: DecodedImages = dataclasses.field(default_factory=lambda: DecodedImages(budget=0))
    preprocess: Callable | None = None  # open_clip's eval preprocess of the model: the test transform's steps
    crops: TestCrops | None = None  # the test transform's crops of whole splits (made from ``cache`` when None)
    _features: dict = dataclasses.field(default_factory=dict)
    _decoded: dict = dataclasses.field(default_factory=dict)
    _items_ids: dict = dataclasses.field(default_factory=dict)

    # -- convenience ---------------------------------------------------------------------------
    @property
    def model(self):
        return self.clf.model

    @property
    def num_classes(self) -> int:
        return len(self.data.classnames)

    def switch_data(self, data: DatasetSplits) -> None:
        """Evaluate on other data (new classes, a shifted dataset)."""
        self.data = data

    def split(self, name: str) -> list[Datum]:
        return getattr(self.data, name)

    def labels(self, split: str) -> torch.Tensor:
        return torch.tensor([d.label for d in self.split(split)], device=self.device)

    def generator(self, stream: int = 0) -> torch.Generator:
        """A CPU generator seeded from the trial seed (``stream`` separates independent uses)."""
        return torch.Generator().manual_seed(int(self.spec.seed) * 1_000_003 + stream)

    def report_epoch(self, epoch: int, image_logits: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """A training loop's hook after each epoch (0-based): when a search listens, score the classifier
        as it stands on the few-shot val split and pass (epoch + 1, top-1 %) on. ``image_logits`` scores the
        val images instead, for a method whose state is not in the classifier yet (masks applied on the fly).
        Scoring leaves the random state as it was, so a trial that is listened to trains as one that is not."""
        if self.epoch_listener is None or not self.split("val"):
            return
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), torch.no_grad():
            if image_logits is None:
                logits = torch.cat([self.clf.logits_from_features(f) for f in self.features("val")[0].split(500)])
            else:
                logits = torch.cat([image_logits(x.to(self.device)) for x, _ in self.loader("val")])
            top1 = 100.0 * float((logits.argmax(-1) == self.labels("val")).float().mean())
        self.epoch_listener(epoch + 1, top1)

    # -- text ----------------------------------------------------------------------------------
    @torch.no_grad()
    def text_weights(self, classnames: Sequence[str] | None = None, templates: Sequence[str] | None = None,
                     lower: bool = False) -> torch.Tensor:
        """L2-normalised class text embeddings [C, D] (float32): per template normalise, average, re-normalise,
        by open_clip's ``build_zero_shot_classifier``.

        ``templates`` defaults to the dataset's (its single prompt, or the ensemble it declares). Every prompt
        is encoded in one pass (one batch of C prompts for a single template, as before open_clip's builder
        was used, so the weights are the same to the bit; C x T for an ensemble), in batches of whole classes
        only beyond ``PROMPTS_PER_PASS`` prompts."""
        from open_clip.zero_shot_classifier import build_zero_shot_classifier

        names = [prompt_classname(c).lower() if lower else prompt_classname(c)
                 for c in (classnames or self.data.classnames)]
        templates = list(templates or self.data.templates)
        one_pass = len(names) * len(templates) <= PROMPTS_PER_PASS
        per_pass = None if one_pass else max(1, PROMPTS_PER_PASS // len(templates))
        weights = build_zero_shot_classifier(self.model, self.tokenizer, names, templates,
                                             num_classes_per_batch=per_pass, device=self.device)
        return weights.T.float().contiguous()

    # -- images --------------------------------------------------------------------------------
    def test_transform(self):
        """open_clip's eval preprocess of the model (:func:`bench.data.transforms.from_preprocess`: the same
        steps, split for the uint8 loader), or CLIP's resize + center crop when the context has none."""
        if self.preprocess is not None:
            return T.from_preprocess(self.preprocess)
        return T.test_transform(self.image_size, self.mean, self.std)

    def _test_key(self) -> tuple:
        """The test transform in feature keys: as before for CLIP's resize + center crop, its steps otherwise
        (a model whose preprocess squashes or pads)."""
        steps = [repr(step) for step in self.test_transform().geometric]
        if steps == [repr(step) for step in T.test_transform(self.image_size).geometric]:
            return ("test", self.image_size, self.mean, self.std)
        return ("test", self.image_size, self.mean, self.std, steps)

    def train_transform(self, scale: tuple[float, float]):
        return T.train_transform(self.image_size, scale, self.mean, self.std)

    def autocast(self):
        """The context of the encoder's passes in the run's precision (bf16 autocast, or nothing)."""
        return autocast(self.device, self.precision)

    def encode_images(self, images: torch.Tensor, kind: str = "features") -> torch.Tensor:
        """The current encoder's float32 features of a batch, in the run's precision, counted in the ledger
        under ``kind``. Gradients flow when enabled (the caller counts the backward pass)."""
        self.ledger.forward(kind, len(images))
        with self.autocast():
            return self.clf.encode(images.to(self.device, non_blocking=True)).float()

    def loader(self, split: str, transform=None, batch_size: int = 100, shuffle: bool = False,
               drop_last: bool = False, generator: torch.Generator | None = None) -> DeviceBatches:
        """Batches of (images, labels) on the device, normalised; iterate it once per epoch (its workers
        persist). ``drop_last`` follows Dassl: only when the set fills a batch. The images and their random
        augmentation do not depend on the number of workers (bench.loading)."""
        items = self.split(split)
        # Few-shot sets are small and read every epoch: decoded once per trial (bounded), cropped from memory.
        few_shot = split in ("train", "val")
        images = self.images if few_shot else self.other_images
        if few_shot:
            images.fill([d.path for d in items], threads=max(1, self.num_workers))
        transform = transform or self.test_transform()
        crops = None
        if not few_shot and isinstance(transform, T.CropThenNormalise) and not transform.random:
            # Other splits (test) are cropped once (bench.loading.TestCrops): every later pass of this trial
            # and, with a cache folder, of every trial reads the same uint8 crops and decodes nothing.
            if self.crops is None:
                self.crops = TestCrops(self.cache.base if self.cache is not None else None,
                                       self.cache.run if self.cache is not None else None)
            crops = (self.crops, TestCrops.key(self._items_id(split), self.image_size, transform))
        return device_batches(items, transform, images, device=self.device,
                              mean=self.mean, std=self.std, batch_size=batch_size, shuffle=shuffle,
                              drop_last=drop_last and len(items) >= batch_size, generator=generator,
                              workers=self.num_workers, crops=crops)

    @torch.no_grad()
    def features(self, split: str, transform=None, views: int = 1, stream: int = 0) -> torch.Tensor:
        """Encoder features [views, N, D] (un-normalised, float32) of a split, in split order.

        ``transform=None`` is the test transform (one view suffices); a random train transform gives
        ``views`` independently augmented passes, seeded from the trial seed and ``stream`` (pass ``i`` is the
        same whatever ``views`` is). Each pass is cached in memory for the trial and, with a cache folder, on
        disk for every trial and method that sees the same encoder, files, transform and seed stream.
        """
        augmented = transform is not None
        what = {"encoder": self.encoder_id, "data": self.spec.dataset_fingerprint, "items": self._items_id(split),
                "transform": repr(transform) if augmented else self._test_key(),
                "seed": (self.spec.seed, stream) if augmented else None, "device": self.device.type,
                **({} if self.precision == "fp32" else {"precision": self.precision})}
        whole = digest({**what, "views": views})
        if whole not in self._features:
            # Each pass is cached on its own, so a method asking for V passes reuses the first ones another
            # method (or an earlier trial) encoded with the same encoder, files, transform and seed stream.
            gen = self.generator(1000 + stream)
            seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) for _ in range(views)]
            batches: list[DeviceBatches] = []  # one loader for every pass, made on the first miss

            def loader() -> DeviceBatches:
                if not batches:
                    batches.append(self.loader(split, transform))
                return batches[0]
            passes = [self._encoded_pass(digest({**what, "view": i}), loader, seed) for i, seed in enumerate(seeds)]
            self._features[whole] = passes[0].unsqueeze(0) if views == 1 else torch.stack(passes)
        return self._features[whole]

    def _encoded_pass(self, key: str, loader: Callable[[], DeviceBatches], seed: int) -> torch.Tensor:
        if key not in self._features:
            feats = self.cache.get(key) if self.cache is not None else None
            if feats is None:
                torch.manual_seed(seed)
                feats = torch.cat([self.encode_images(x) for x, _ in loader()])
                if self.cache is not None:
                    self.cache.put(key, feats)
            self._features[key] = feats.to(self.device)
        return self._features[key]

    def _items_id(self, split: str) -> str:
        items = self.split(split)
        if id(items) not in self._items_ids:
            self._items_ids[id(items)] = (items, items_fingerprint(items))  # keep items alive: ids stay unique
        return self._items_ids[id(items)][1]
