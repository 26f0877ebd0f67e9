"""TrialContext: what a method sees of its trial — data, loaders, transforms, cached features."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from .data import transforms as T
from .data.splits import DatasetSplits, Datum
from .errors import BenchError


class ImageList(Dataset):
    def __init__(self, items: Sequence[Datum], transform: Callable):
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        d = self.items[i]
        try:
            with Image.open(d.path) as im:
                return self.transform(im.convert("RGB")), d.label
        except FileNotFoundError:
            raise BenchError(f"image {d.path} listed in the split is missing; restore the dataset's files "
                             "(`bench data check` lists what is missing)") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            # A damaged file fails its trial rather than being skipped: skipping would change the split.
            raise BenchError(f"corrupt image file {d.path} ({type(err).__name__}); replace it with a good "
                             "copy from the dataset's source") from None


def prompt_classname(name: str) -> str:
    return name.replace("_", " ")


@dataclasses.dataclass
class TrialContext:
    spec: object  # TrialSpec
    clf: torch.nn.Module  # ClipClassifier
    tokenizer: Callable
    data: DatasetSplits
    device: torch.device
    image_size: int
    mean: tuple = T.OPENAI_MEAN
    std: tuple = T.OPENAI_STD
    progress: Callable[[str], None] = lambda msg: None  # short status lines for long fits
    artifact_dir: Path | None = None  # where a method may save files (e.g. learned masks); None: nowhere
    short_classes: int = 0  # classes with fewer than K train images (all of them are used)
    encoder_version: int = 0  # bumped by the harness whenever an encoder-slot method changed the weights
    _features: dict = dataclasses.field(default_factory=dict)

    # -- convenience ---------------------------------------------------------------------------
    @property
    def model(self):
        return self.clf.model

    @property
    def num_classes(self) -> int:
        return len(self.data.classnames)

    def switch_data(self, data: DatasetSplits) -> None:
        """Evaluate on other data (new classes, a shifted dataset); cached features are dropped."""
        self.data = data
        self._features.clear()

    def split(self, name: str) -> list[Datum]:
        return getattr(self.data, name)

    def labels(self, split: str) -> torch.Tensor:
        return torch.tensor([d.label for d in self.split(split)], device=self.device)

    def generator(self, stream: int = 0) -> torch.Generator:
        """A CPU generator seeded from the trial seed (``stream`` separates independent uses)."""
        return torch.Generator().manual_seed(int(self.spec.seed) * 1_000_003 + stream)

    # -- text ----------------------------------------------------------------------------------
    @torch.no_grad()
    def text_weights(self, classnames: Sequence[str] | None = None, templates: Sequence[str] | None = None,
                     lower: bool = False) -> torch.Tensor:
        """L2-normalised class text embeddings [C, D]: per template normalise, average, re-normalise."""
        classnames = classnames or self.data.classnames
        templates = templates or [self.data.template]
        per_template = []
        for template in templates:
            texts = [template.format(prompt_classname(c).lower() if lower else prompt_classname(c))
                     for c in classnames]
            emb = self.model.encode_text(self.tokenizer(texts).to(self.device))
            per_template.append(F.normalize(emb.float(), dim=-1))
        return F.normalize(torch.stack(per_template).mean(0), dim=-1)

    # -- images --------------------------------------------------------------------------------
    def test_transform(self):
        return T.test_transform(self.image_size, self.mean, self.std)

    def train_transform(self, scale: tuple[float, float]):
        return T.train_transform(self.image_size, scale, self.mean, self.std)

    def loader(self, split: str, transform=None, batch_size: int = 100, shuffle: bool = False,
               drop_last: bool = False, generator: torch.Generator | None = None) -> DataLoader:
        """Batches of (images, labels). ``drop_last`` follows Dassl: only when the set fills a batch."""
        items = self.split(split)
        return DataLoader(ImageList(items, transform or self.test_transform()), batch_size=batch_size,
                          shuffle=shuffle, drop_last=drop_last and len(items) >= batch_size,
                          generator=generator, num_workers=0)

    @torch.no_grad()
    def features(self, split: str, transform=None, views: int = 1, stream: int = 0) -> torch.Tensor:
        """Encoder features [views, N, D] (un-normalised) of a split, in split order.

        ``transform=None`` is the test transform (one view suffices); a random train transform gives
        ``views`` independently augmented passes. Cached per encoder state within the trial.
        """
        key = (split, repr(transform) if transform is not None else "test", views, stream, self.encoder_version)
        if key not in self._features:
            gen = self.generator(1000 + stream)
            out = []
            for _ in range(views):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                feats = [self.clf.encode(x.to(self.device)).float() for x, _ in self.loader(split, transform)]
                out.append(torch.cat(feats))
            self._features[key] = torch.stack(out)
        return self._features[key]
