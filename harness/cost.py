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
