"""CLIP's test transform and the random-resized-crop train augmentations the methods ask for."""
from __future__ import annotations

from torchvision import transforms as T

BICUBIC = T.InterpolationMode.BICUBIC
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def test_transform(size: int, mean=OPENAI_MEAN, std=OPENAI_STD) -> T.Compose:
    """Resize the shorter side (bicubic) -> center crop -> normalise (CoOp's and CLIP's eval transform)."""
    return T.Compose([T.Resize(size, interpolation=BICUBIC), T.CenterCrop(size), _to_rgb_tensor(),
                      T.Normalize(mean, std)])


def train_transform(size: int, scale: tuple[float, float], mean=OPENAI_MEAN, std=OPENAI_STD) -> T.Compose:
    """RandomResizedCrop(scale, bicubic) -> horizontal flip -> normalise.

    CoOp uses scale (0.08, 1); Tip-Adapter and R-AMT use (0.5, 1).
    """
    return T.Compose([T.RandomResizedCrop(size, scale=scale, interpolation=BICUBIC), T.RandomHorizontalFlip(),
                      _to_rgb_tensor(), T.Normalize(mean, std)])


def _to_rgb_tensor():
    return T.Compose([T.Lambda(lambda im: im.convert("RGB")), T.ToTensor()])
