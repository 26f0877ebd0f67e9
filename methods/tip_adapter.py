"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): a key-value cache of the few-shot images.

Faithful to gaopengcuhk/Tip-Adapter ``main.py`` / ``utils.py`` (reference: baselines.md §4-5):

* Cache: keys = the mean over ``augment_views`` (10) augmented passes (RandomResizedCrop 0.5-1 + flip) of
  the un-normalised train features, then L2-normalised ([NK, D]); values = one-hot labels ([NK, C]).
* Logit term, on the L2-normalised incoming features f: ``alpha * exp(-beta * (1 - f K^T)) L``, added to
  the logits of the installed head (``100 f W`` for the zero-shot head; in a stack, whatever HEAD method
  ran before, e.g. CoOp's learned prompts), on the features after any installed adapter.
* (alpha, beta) search: the official grid, beta_i = 0.1 + i (S_beta - 0.1) / 200 (outer loop),
  alpha_j = 0.1 + j (S_alpha - 0.1) / 20 (inner), keeping the first pair with strictly higher accuracy.
* Per-dataset init_alpha and search ranges from the official ``configs/*.yaml``; init_beta 1. Datasets
  outside that table (``syn_*`` and any other) use the maintainer's tuning baseline alpha = beta = 1 and
  a moderate range (S_beta, S_alpha) = (10, 5), between the tight [7, 3] of ImageNet/Pets/UCF101 and the
  wide ranges of the fine-grained sets.
* Tip-Adapter-F: the keys become learnable (initialised to the cache keys; values fixed), trained with
  the logits above at the initial alpha/beta; AdamW lr 0.001, eps 1e-4, weight decay 0.01, cosine over all
  iterations stepped per batch, batch 256 keeping the last partial batch (``drop_last=False``, so e.g. 4
  shots of Caltech101's 100 classes are 2 steps an epoch), 20 epochs (EuroSAT 100), augmentation as the
  cache; then the
  (alpha, beta) search with the fine-tuned keys.

**Selection uses the few-shot validation split only, never the test split.** The official code searches
(alpha, beta) on the full val split (on the test set for ImageNet), keeps the Tip-Adapter-F epoch with the
best *test* accuracy and reports the better of two test numbers; here the search and the epoch choice
(``select="val"``: the epoch with the best few-shot-val accuracy at the initial alpha/beta, the later one
on ties since a few-shot val split ties often; or ``select="last"``) read the few-shot val split only, and
the test split is left to the harness's one final evaluation.

**Prompts.** The official code builds the zero-shot classifier of ImageNet from the 7-template ensemble
(``IMAGENET_TEMPLATES_SELECT``, :mod:`bench.data.templates`) and of its 10 other datasets from the single
CoOp template. So on ``imagenet``, when the installed head is still the zero-shot head (no HEAD method ran
before, e.g. ``tip_adapter``, ``tip_adapter_f``, ``tip_adapter+mask``, ``clip_adapter+tip_adapter``), the
head is rebuilt from those 7 templates before the cache is fitted: those ImageNet rows change (version 2),
every other row is as before. Every other dataset keeps its own templates (CoOp's single prompt, or the
ensemble an own-data table declares); zero-shot, CoOp and mask keep CoOp's single template everywhere.

The "CLIP logits" are the installed head's: ``logit_scale.exp()`` × cosine for the zero-shot head, which is
the official hard-coded 100 for OpenAI weights (other models use their own learned scale).

Other differences: fp32 throughout (the official code runs CLIP and the cache in fp16). Tip-Adapter-F
trains on cached encoder features of augmented views (``feature_cache=true``): ``train_views=0`` caches one
fresh augmented pass per epoch (as many views as the official per-epoch loader), ``train_views=V`` cycles
V passes; ``feature_cache=false`` runs the encoder on freshly augmented batches every epoch, as the
official loop. The training passes are drawn independently of the 10 cache passes.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench import BenchError, Method, Part
from bench.plugin import AtLeastOne, NonNegative, Positive, Range, Search
from bench.classifier import ZeroShotHead
from bench.data.templates import IMAGENET_TEMPLATES_SELECT

from ._training import n_batches, optimizer_step, train_epochs, train_feature_batches

# dataset: (init_alpha, (S_beta, S_alpha), train epochs), from the official configs/*.yaml.
TABLE: dict[str, tuple[float, tuple[float, float], int]] = {
    "imagenet": (1.17, (7.0, 3.0), 20),
    "caltech101": (3.0, (12.0, 5.0), 20),
    "oxford_pets": (1.17, (7.0, 3.0), 20),
    "stanford_cars": (3.0, (20.0, 10.0), 20),
    "oxford_flowers": (10.0, (50.0, 50.0), 20),
    "food101": (1.17, (10.0, 10.0), 20),
    "fgvc_aircraft": (5.0, (30.0, 30.0), 20),
    "sun397": (1.17, (12.0, 10.0), 20),
    "dtd": (2.0, (13.0, 13.0), 20),
    "eurosat": (2.0, (12.0, 10.0), 100),
    "ucf101": (3.0, (7.0, 3.0), 20),
}
GENERIC = (1.0, (10.0, 5.0), 20)  # any other dataset (syn_* included): see the module docstring

# dataset: the templates of the official zero-shot classifier where they are not the dataset's own.
OFFICIAL_TEMPLATES: dict[str, tuple[str, ...]] = {"imagenet": IMAGENET_TEMPLATES_SELECT}


@dataclasses.dataclass
class TipAdapterConfig:
    # The official configs set alpha per dataset and grid-search (alpha, beta) within per-dataset ranges; with
    # search_hp the grid re-chooses them on few-shot val, so a `bench tune` search moves only Tip-Adapter-F's
    # training start (or Tip-Adapter with search_hp=false).
    init_alpha: Annotated[float, NonNegative, Search(low=0.1, high=10.0, log=True)] = 1.0  # residual ratio alpha before (or without) the search
    init_beta: Annotated[float, NonNegative, Search(low=0.5, high=20.0, log=True)] = 1.0  # sharpness beta before (or without) the search
    search_hp: bool = True  # grid-search (alpha, beta) on the few-shot val split
    search_scale: Annotated[tuple[float, float], Positive] = (10.0, 5.0)  # (S_beta, S_alpha), upper ends of the grids
    search_step: Annotated[tuple[int, int], AtLeastOne] = (200, 20)  # grid sizes (beta, alpha)
    augment_views: Annotated[int, AtLeastOne] = 10  # augmented passes averaged into the keys
    crop_scale: Annotated[tuple[float, float], Range(0, 1, min_exclusive=True)] = (0.5, 1.0)


@dataclasses.dataclass
class TipAdapterFConfig(TipAdapterConfig):
    epochs: Annotated[int, AtLeastOne, Search(choices=(10, 20, 50, 100))] = 20  # EuroSAT 100 (defaults_for)
    batch_size: Annotated[int, AtLeastOne] = 256
    lr: Annotated[float, Positive, Search(low=1e-4, high=1e-2, log=True)] = 0.001
    eps: Annotated[float, Positive] = 1e-4
    weight_decay: Annotated[float, NonNegative] = 0.01
    select: Literal["val", "last"] = "val"  # epoch choice: best few-shot val accuracy, or the last epoch
    feature_cache: bool = True  # train on cached encoder features of augmented views
    train_views: Annotated[int, NonNegative] = 0  # cached augmented passes for training; 0 = one per epoch


class CacheTerm(nn.Module):
    """Tip-Adapter's cache logits: alpha * exp(-beta * (1 - normalize(f) K^T)) L."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, alpha: float, beta: float, learn_keys: bool = False):
        super().__init__()
        self.keys = nn.Parameter(keys.clone(), requires_grad=learn_keys)  # [NK, D]
        self.register_buffer("values", values)  # [NK, C]
        self.alpha, self.beta = float(alpha), float(beta)

    def affinity(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1) @ self.keys.t()

    def cache_logits(self, features: torch.Tensor, beta: float | None = None) -> torch.Tensor:
        beta = self.beta if beta is None else beta
        return torch.exp(-beta * (1.0 - self.affinity(features))) @ self.values

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.cache_logits(features)


def grid(scale: float, steps: int) -> list[float]:
    """The official search grid: 0.1 + i (scale - 0.1) / steps for i < steps (scale never reached)."""
    return [0.1 + i * (scale - 0.1) / steps for i in range(steps)]


@torch.no_grad()
def search_alpha_beta(term: CacheTerm, features: torch.Tensor, base_logits: torch.Tensor, labels: torch.Tensor,
                      scale: tuple[float, float], steps: tuple[int, int]) -> tuple[float, float, float]:
    """Exhaustive (beta outer, alpha inner) search; the first pair with strictly higher accuracy wins.

    Returns (alpha, beta, accuracy in percent) on the given (validation) features.
    """
    betas, alphas = grid(scale[0], int(steps[0])), grid(scale[1], int(steps[1]))
    alpha_t = torch.tensor(alphas, device=features.device, dtype=base_logits.dtype).view(-1, 1, 1)
    best = (-1, alphas[0], betas[0])
    for beta in betas:
        cache = term.cache_logits(features, beta)
        correct = ((base_logits + alpha_t * cache).argmax(-1) == labels).sum(-1)  # [n_alpha]
        j = int(correct.argmax())  # first alpha reaching this beta's maximum
        if int(correct[j]) > best[0]:
            best = (int(correct[j]), alphas[j], beta)
    return best[1], best[2], 100.0 * best[0] / max(len(labels), 1)


class _TipBase(Method):
    """Shared by Tip-Adapter and Tip-Adapter-F: cache construction, installation and the search."""

    changes = frozenset({Part.LOGIT_TERM})
    version = "2"  # 2: ImageNet's zero-shot head from the official 7-template ensemble
    transfers_to_new_classes = False  # the cache's values are the training classes

    @classmethod
    def defaults_for(cls, dataset: str, shots: int) -> dict:
        alpha, scale, epochs = TABLE.get(dataset, GENERIC)
        out = {"init_alpha": alpha, "init_beta": 1.0, "search_scale": scale}
        if "epochs" in {f.name for f in dataclasses.fields(cls.Config)}:
            out["epochs"] = epochs
        return out

    @classmethod
    def plan_work(cls, config: TipAdapterConfig, plan) -> None:
        plan.features("train", ("crop", tuple(config.crop_scale), 30), config.augment_views)
        if config.search_hp or getattr(config, "select", "") == "val":
            plan.features("val")
        if isinstance(config, TipAdapterFConfig):
            if config.feature_cache:
                plan.features("train", ("crop", tuple(config.crop_scale), 31), config.train_views or config.epochs)
            else:
                plan.live("train", config.batch_size, config.epochs, drop_last=False)

    def train_keys(self, term: CacheTerm, clf, ctx, val) -> dict:
        """Tip-Adapter-F's fine-tuning; nothing for the training-free Tip-Adapter."""
        return {}

    def fit(self, clf, ctx) -> dict:
        cfg: TipAdapterConfig = self.config
        if cfg.augment_views < 1:
            raise BenchError(f"{self.name}.augment_views must be at least 1, got {cfg.augment_views}")
        templates = OFFICIAL_TEMPLATES.get(ctx.data.name)
        if templates and isinstance(clf.head, ZeroShotHead):
            clf.head = ZeroShotHead(ctx.text_weights(templates=templates), clf.logit_scale).to(ctx.device)
        with torch.no_grad():
            views = ctx.features("train", ctx.train_transform(tuple(cfg.crop_scale)), views=cfg.augment_views,
                                 stream=30)
            keys = F.normalize(clf.adapt(views).mean(0), dim=-1)  # mean of un-normalised, then L2
            values = F.one_hot(ctx.labels("train"), ctx.num_classes).float()
        term = CacheTerm(keys, values, cfg.init_alpha, cfg.init_beta).to(ctx.device)
        val = self.validation(clf, ctx) if (cfg.search_hp or getattr(cfg, "select", "") == "val") else None
        clf.logit_terms.append(term)  # in its slot from here: Tip-Adapter-F trains on the classifier's logits
        out = self.train_keys(term, clf, ctx, val)
        if cfg.search_hp:
            feats, base, labels = val
            term.alpha, term.beta, acc = search_alpha_beta(term, feats, base, labels, cfg.search_scale,
                                                           cfg.search_step)
            out["val_top1_search"] = acc
        term.requires_grad_(False)
        return {"trainable_params": term.keys.numel() if out.pop("learned", False) else 0,
                "alpha": term.alpha, "beta": term.beta, **out}

    def validation(self, clf, ctx):
        """Adapted few-shot val features, the logits of what is installed so far, and the labels."""
        if not ctx.split("val"):
            raise BenchError(f"{self.name} selects on the few-shot validation split, but it is empty; "
                             f"set {self.name}.search_hp=false (and {self.name}.select=last)")
        with torch.no_grad():
            raw = ctx.features("val")[0]
            return clf.adapt(raw), clf.logits_from_features(raw), ctx.labels("val")


class TipAdapter(_TipBase):
    name = "tip_adapter"
    description = "Tip-Adapter: training-free cache of few-shot image features as a logit term (Zhang et al., ECCV 2022)"
    trains = "nothing; cache keys from 10 augmented views, (alpha, beta) searched on the few-shot val split"
    Config = TipAdapterConfig


class TipAdapterF(_TipBase):
    name = "tip_adapter_f"
    description = "Tip-Adapter-F: Tip-Adapter's cache with fine-tuned keys (Zhang et al., ECCV 2022)"
    trains = "cache keys, AdamW + per-step cosine, epoch and (alpha, beta) chosen on the few-shot val split"
    Config = TipAdapterFConfig
    version = "3"  # 2: ImageNet's 7-template head; 3: the last partial batch of each epoch is trained on

    def train_keys(self, term: CacheTerm, clf, ctx, val) -> dict:
        cfg: TipAdapterFConfig = self.config
        term.keys.requires_grad_(True)
        optimizer = torch.optim.AdamW([term.keys], lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
        # The official loader keeps the last partial batch (drop_last=False): every image every epoch.
        steps = cfg.epochs * n_batches(len(ctx.split("train")), cfg.batch_size, drop_last=False)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
        views = (cfg.train_views or cfg.epochs) if cfg.feature_cache else None
        epoch_batches = train_feature_batches(clf, ctx, ctx.train_transform(tuple(cfg.crop_scale)), cfg.batch_size,
                                              ctx.generator(31), views, stream=31, drop_last=False)
        best = {"correct": -1, "epoch": cfg.epochs - 1, "keys": None}

        def step(feats, y) -> float:
            with torch.no_grad():
                feats = clf.adapt(feats)
            return optimizer_step(optimizer, F.cross_entropy(clf.logits_from_adapted(feats), y))

        def select_on_val(epoch: int) -> None:
            feats_v, base_v, labels_v = val
            with torch.no_grad():
                correct = int(((base_v + term(feats_v)).argmax(-1) == labels_v).sum())
            if correct >= best["correct"]:  # ties: the later, longer-trained epoch
                best.update(correct=correct, epoch=epoch, keys=term.keys.detach().clone())

        term.train()
        loss_value = train_epochs(cfg.epochs, epoch_batches, step, scheduler=scheduler, per_batch=True,
                                  after_epoch=select_on_val if cfg.select == "val" else None,
                                  val_report=ctx.report_epoch, report=(ctx.progress, self.name, 5))
        best_epoch, best_keys = best["epoch"], best["keys"]
        if best_keys is not None:
            with torch.no_grad():
                term.keys.copy_(best_keys)
        return {"learned": True, "epoch": best_epoch, "epochs": cfg.epochs, "train_loss": loss_value,
                "views": views or 0}
