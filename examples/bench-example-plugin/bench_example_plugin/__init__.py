"""A complete bench method plugin in one file: classify by the nearest class prototype.

The prototype of a class is the mean of its normalised few-shot image features, blended with the
class's zero-shot text weight. Installed with ``pip install -e .``, it appears in ``bench list methods``
and stacks with the others, e.g. ``bench run --methods prototype+mask``.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from bench import Method, Part
from bench.classifier import ZeroShotHead


@dataclasses.dataclass
class Config:
    text_weight: float = 0.5  # share of the zero-shot text weight in each prototype


class PrototypeHead(Method):
    name = "prototype"
    description = "Nearest class prototype (mean few-shot feature blended with the text weight)"
    trains = "nothing: prototypes are feature means"
    changes = frozenset({Part.HEAD})
    Config = Config

    def fit(self, clf, ctx):
        feats = F.normalize(ctx.features("train")[0], dim=-1)
        labels = ctx.labels("train")
        means = torch.zeros(ctx.num_classes, feats.shape[1], device=feats.device)
        means.index_add_(0, labels, feats)
        means = F.normalize(means, dim=-1)
        text = ctx.text_weights()
        w = self.config.text_weight
        clf.head = ZeroShotHead(w * text + (1 - w) * means, clf.logit_scale)
        return {"trainable_params": 0}
