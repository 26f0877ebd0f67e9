"""CLIP-Adapter (Gao et al., IJCV 2024): a residual bottleneck MLP on the image features.

Faithful to gaopengcuhk/CLIP-Adapter ``clip_adapter.py`` (reference: baselines.md §3), visual adapter:
``A(f) = ReLU(W2 ReLU(W1 f))`` with W1: d -> d/``reduction`` and W2: d/``reduction`` -> d, no biases;
``f' = ratio * A(f) + (1 - ratio) * f`` on the raw (un-normalised) encoder features, ``ratio`` = 0.2;
logits from the installed head on ``f'`` (the zero-shot text classifier of the dataset's hand-written
prompt, 100 × cosine, as the official code's frozen ``CUSTOM_TEMPLATES`` features); cross-entropy; fp32.

Training settings. The repository publishes none (no config, learning rate or epoch count; the README
says to run it like CoOp), so the defaults are CoOp's Dassl recipe, the reference's stated assumption:
SGD lr 0.002, momentum 0.9, weight decay 5e-4, one warm-up epoch at 1e-5 then the shifted cosine, batch
32, CoOp's epochs by shots (1: 50, 2/4: 100, 8/16: 200, ImageNet 50) and CoOp's augmentation
(RandomResizedCrop 0.08-1 + flip). This keeps the adapter comparable with CoOp on the same budget. Every
setting is a Config field, so ``--set clip_adapter.lr=...`` etc. overrides it. The last epoch is kept:
nothing is selected, on any split.

Features. The encoder is frozen, so training runs on cached encoder features of augmented views
(``feature_cache=true``, the default): ``views=0`` encodes one augmented pass per epoch, i.e. as many
augmented views as the official per-epoch loop sees; ``views=V`` caches V passes and cycles them over the
epochs (cheaper, not the official behaviour). ``feature_cache=false`` runs the encoder inside the
training loop on freshly augmented batches, as the official code does.

In a stack the adapter sits after any encoder change and before the head: ``clip_adapter+coop`` trains
the adapter against the zero-shot head, then CoOp on the adapted features; ``clip_adapter+tip_adapter``
builds the cache from adapted features.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from bench import BenchError, Method, Part
from bench.plugin import AtLeastOne, NonNegative, Range, Search

from ._training import DasslSGDConfig, coop_epochs, optimizer_step, train_epochs, train_feature_batches, warmup_cosine


@dataclasses.dataclass
class ClipAdapterConfig(DasslSGDConfig):
    reduction: Annotated[int, AtLeastOne] = 4  # bottleneck d -> d/reduction -> d
    ratio: Annotated[float, Range(0, 1), Search(low=0.1, high=0.9)] = 0.2  # the paper sweeps 0-1; residual ratio alpha: f' = ratio * A(f) + (1 - ratio) * f
    feature_cache: bool = True  # train on cached encoder features of augmented views
    views: Annotated[int, NonNegative] = 0  # cached augmented passes; 0 = one per epoch (as many as the official loop)


class ResidualAdapter(nn.Module):
    """f' = ratio * ReLU(W2 ReLU(W1 f)) + (1 - ratio) * f."""

    def __init__(self, dim: int, reduction: int = 4, ratio: float = 0.2):
        super().__init__()
        if reduction < 1 or dim // reduction < 1:
            raise BenchError(f"clip_adapter.reduction must be between 1 and the feature size {dim}, got {reduction}")
        self.fc = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(dim // reduction, dim, bias=False), nn.ReLU(inplace=True))
        self.ratio = float(ratio)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.ratio * self.fc(features) + (1.0 - self.ratio) * features


def feature_dim(clf, ctx) -> int:
    dim = getattr(clf.model.visual, "output_dim", None)
    if dim is None:  # an image tower without output_dim: encode one image
        dim = ctx.features("train")[0].shape[-1]
    return int(dim)


class ClipAdapter(Method):
    name = "clip_adapter"
    description = "CLIP-Adapter: residual bottleneck MLP on image features (Gao et al., IJCV 2024)"
    trains = "visual adapter d->d/4->d (ratio 0.2), CoOp's SGD recipe on cached augmented features, last epoch"
    changes = frozenset({Part.ADAPTER})
    Config = ClipAdapterConfig
    version = "1"

    @classmethod
    def defaults_for(cls, dataset: str, shots: int) -> dict:
        return {"epochs": coop_epochs(dataset, shots)}

    @classmethod
    def plan_work(cls, config: ClipAdapterConfig, plan) -> None:
        if config.feature_cache:
            plan.features("train", ("crop", tuple(config.crop_scale), 0), config.views or config.epochs)
        else:
            plan.live("train", config.batch_size, config.epochs, drop_last=True)

    def fit(self, clf, ctx) -> dict:
        cfg: ClipAdapterConfig = self.config
        if cfg.epochs < 1:
            raise BenchError(f"clip_adapter.epochs must be at least 1, got {cfg.epochs}")
        dim = feature_dim(clf, ctx)
        adapter = ResidualAdapter(dim, cfg.reduction, cfg.ratio).to(ctx.device)
        optimizer = torch.optim.SGD(adapter.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        views = (cfg.views or cfg.epochs) if cfg.feature_cache else None
        epoch_batches = train_feature_batches(clf, ctx, ctx.train_transform(tuple(cfg.crop_scale)), cfg.batch_size,
                                              ctx.generator(21), views)
        clf.adapters.append(adapter)  # trained in its slot: the logits are the classifier's own

        def step(feats, y) -> float:
            return optimizer_step(optimizer, F.cross_entropy(clf.logits_from_features(feats), y))

        adapter.train()
        train_loss = train_epochs(cfg.epochs, epoch_batches, step,
                                  scheduler=warmup_cosine(optimizer, cfg.epochs, cfg.warmup_epochs, cfg.warmup_lr),
                                  val_report=ctx.report_epoch, report=(ctx.progress, self.name, 20))
        adapter.eval().requires_grad_(False)
        return {"trainable_params": sum(p.numel() for p in adapter.parameters()), "epochs": cfg.epochs,
                "views": views or 0, "train_loss": train_loss}
