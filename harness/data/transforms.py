"""CLIP's test transform and the random-resized-crop train augmentations the methods ask for.

Both are :class:`CropThenNormalise`: geometric steps on the PIL image, then to a tensor and normalised.
Called on an image they behave as the ``Compose`` they are; the loader (bench.loading) splits them instead:
the random parameters are drawn in the main process (:meth:`CropThenNormalise.draw`, from torch's global
generator in the order the call would draw them), the crop runs in a worker to a uint8 image
(:meth:`CropThenNormalise.to_uint8`), and :func:`normalise` on the device gives the same floats bit for bit.
"""
from __future__ import annotations

import torch
from torchvision import transforms as T
from torchvision.transforms import functional as F

BICUBIC = T.InterpolationMode.BICUBIC
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def test_transform(size: int, mean=OPENAI_MEAN, std=OPENAI_STD) -> T.Compose:
    """Resize the shorter side (bicubic) -> center crop -> normalise (CoOp's and CLIP's eval transform)."""
    return CropThenNormalise([T.Resize(size, interpolation=BICUBIC), T.CenterCrop(size)], mean, std)


def from_preprocess(preprocess) -> "CropThenNormalise":
    """open_clip's eval ``preprocess`` (what ``load_model`` returns) as a :class:`CropThenNormalise` with the
    same steps: its geometric steps as they are (``Resize``/``CenterCrop``, or ``ResizeKeepRatio``/
    ``CenterCropOrPad`` for a model whose ``resize_mode`` is ``longest``), its mean and std.

    Why not call ``preprocess`` itself: the loader splits the transform in two halves (bench.loading) — the
    geometric steps run in a worker and end in a uint8 crop (a quarter of float32's bytes through shared
    memory, and what bench.loading.TestCrops stores), while the conversion to floats and ``Normalize`` run
    on the device (:func:`normalise`). open_clip's ``Compose`` ends in ``MaybeConvertMode``,
    ``MaybeToTensor`` and ``Normalize`` and has no uint8 half to stop at, so it is taken apart here; the
    floats are the same bit for bit (tests/test_data_path.py checks all three resize modes). A preprocess
    of any other shape (a random step, no ``Normalize`` last) is refused rather than guessed at."""
    steps = list(getattr(preprocess, "transforms", []))
    convert = [i for i, step in enumerate(steps) if type(step).__name__ in _CONVERSIONS
               or getattr(step, "__name__", "") == "_convert_to_rgb"]
    if not steps or not convert or not isinstance(steps[-1], T.Normalize) or convert[-1] != len(steps) - 2 \
            or convert != list(range(convert[0], len(steps) - 1)):
        raise ValueError(f"not an open_clip eval preprocess (geometric steps, conversions, Normalize): {preprocess!r}")
    geometric = steps[: convert[0]]
    if any(type(step).__name__.startswith("Random") for step in geometric):
        raise ValueError(f"an eval preprocess has no random steps: {preprocess!r}")
    normalize = steps[-1]
    return CropThenNormalise(geometric, tuple(float(m) for m in normalize.mean), tuple(float(s) for s in normalize.std))


_CONVERSIONS = {"MaybeConvertMode", "MaybeToTensor", "ToTensor", "PILToTensor"}


def train_transform(size: int, scale: tuple[float, float], mean=OPENAI_MEAN, std=OPENAI_STD) -> T.Compose:
    """RandomResizedCrop(scale, bicubic) -> horizontal flip -> normalise.

    CoOp uses scale (0.08, 1); Tip-Adapter and R-AMT use (0.5, 1).
    """
    return CropThenNormalise([T.RandomResizedCrop(size, scale=scale, interpolation=BICUBIC),
                              T.RandomHorizontalFlip()], mean, std)


def _to_rgb_tensor():
    return T.Compose([T.Lambda(lambda im: im.convert("RGB")), T.ToTensor()])


class CropThenNormalise(T.Compose):
    """``Compose([*geometric, to RGB tensor, Normalize(mean, std)])`` that can also run in two halves."""

    def __init__(self, geometric: list, mean, std):
        super().__init__([*geometric, _to_rgb_tensor(), T.Normalize(mean, std)])
        self.geometric, self.mean, self.std = list(geometric), tuple(mean), tuple(std)

    def __repr__(self) -> str:  # as the plain Compose it replaces: feature cache keys stay valid
        return T.Compose.__repr__(self).replace(type(self).__name__, "Compose", 1)

    @property
    def random(self) -> bool:
        return any(isinstance(step, (T.RandomResizedCrop, T.RandomHorizontalFlip)) for step in self.geometric)

    def draw(self, width: int, height: int) -> tuple:
        """The random parameters of one call on a ``width`` x ``height`` image, drawn as the call would."""
        params = []
        for step in self.geometric:
            if isinstance(step, T.RandomResizedCrop):
                params.append(step.get_params(torch.zeros(()).expand(3, height, width), step.scale, step.ratio))
            elif isinstance(step, T.RandomHorizontalFlip):
                params.append(bool(torch.rand(1) < step.p))
            elif not isinstance(step, (T.Resize, T.CenterCrop)):
                raise TypeError(f"no drawn parameters for {step!r}")
        return tuple(params)

    def to_uint8(self, image, params: tuple) -> torch.Tensor:
        """The geometric steps with drawn ``params`` on a PIL RGB image: a uint8 [3, H, W] tensor."""
        drawn = iter(params)
        for step in self.geometric:
            if isinstance(step, T.RandomResizedCrop):
                i, j, h, w = next(drawn)
                image = F.resized_crop(image, i, j, h, w, step.size, step.interpolation, antialias=step.antialias)
            elif isinstance(step, T.RandomHorizontalFlip):
                image = F.hflip(image) if next(drawn) else image
            else:
                image = step(image)
        return F.pil_to_tensor(image if image.mode == "RGB" else image.convert("RGB"))  # no copy when RGB


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 as ``ToTensor`` + ``Normalize`` compute it (the same floats)."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    return images.to(torch.float32).div(255).sub_(m).div_(s)
