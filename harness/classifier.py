"""The classifier that every method plugs into.

    images -> encoder (open_clip image tower) -> adapters -> head -> logits (+ logit terms)

Features leave the encoder un-normalised; each head or term normalises what it needs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ZeroShotHead(nn.Module):
    """logits = scale * cos(image feature, class text weight): CLIP's zero-shot classifier."""

    def __init__(self, text_weights: torch.Tensor, logit_scale: float, templates: list[str] | None = None):
        super().__init__()
        self.register_buffer("weights", F.normalize(text_weights, dim=-1))
        self.logit_scale = float(logit_scale)
        self.templates = templates  # the prompts the weights were made with (None: the dataset's)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * F.normalize(features, dim=-1) @ self.weights.to(features.dtype).t()

    def for_classes(self, classnames, ctx) -> "ZeroShotHead":
        """The same head for other class names (base-to-new evaluation)."""
        return ZeroShotHead(ctx.text_weights(classnames, self.templates), self.logit_scale,
                            self.templates).to(self.weights.device)


class ClipClassifier(nn.Module):
    """A frozen open_clip model with named slots: ``adapters``, ``head`` and ``logit_terms``.

    Encoder-slot methods change ``model.visual`` in place (e.g. baked masks); the other slots hold
    modules installed by the methods of a stack.
    """

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model = model
        self.adapters = nn.ModuleList()
        self.head = head
        self.logit_terms = nn.ModuleList()
        self.model.requires_grad_(False)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder features through the installed adapters."""
        for adapter in self.adapters:
            features = adapter(features)
        return features

    def logits_from_adapted(self, features: torch.Tensor) -> torch.Tensor:
        """The head's logits plus every logit term, on features already through the adapters."""
        logits = self.head(features)
        for term in self.logit_terms:
            logits = logits + term(features)
        return logits

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits_from_adapted(self.adapt(features))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.encode(images))
