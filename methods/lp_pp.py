"""LP++ (Huang, Shakeri, Dolz & Ben Ayed, CVPR 2024): a text-aware linear probe with data-derived step sizes.

Faithful to FereshteShakeri/FewShot-CLIP-Strong-Baseline ``methods/linear_probe_p2.py`` (reference:
more_methods.md §6), on bench's cached features:

* Features: L2-normalised image features — the train split through one augmented pass
  (RandomResizedCrop(0.5-1, bicubic) + flip, as the official loader), the val split through the test
  transform; in a stack, after any installed adapter. Text weights: the classifier's zero-shot text
  weights (the dataset's prompt, or those of a text-changing stage before).
* Logits = ``f W^T + b + alpha_c (f . t_c)``: a visual linear layer plus class-wise blended text logits.
  ``W`` starts at the class **sums** of the train features (the official centroids, undivided), ``b`` at
  ``nn.Linear``'s default init (U(-1/sqrt(d), 1/sqrt(d)), seeded), every ``alpha_c`` at
  ``250 x mean_c(mean of f_i . t_c over class c's images)``.
* Step sizes from the data, no learning-rate search: ``lr_w = 4 N / lambda_max(F^T F)`` (SGD, momentum
  0.9, on W and b) and ``lr_alpha = N / (4 max_c sum_i (f_i . t_c)^2)`` (plain gradient steps on alpha every
  10 epochs). As the official code, alpha's gradient is never zeroed: each alpha step uses the gradient
  summed over every epoch so far.
* Full-batch cross-entropy, 300 epochs; the epoch with the best accuracy on the few-shot validation split
  is kept (ties: the later), W, b and alpha as they were after that epoch's update.

Differences from the official code: the validation split is bench's min(K, 4) images per class (the
official draws K per class from the val split); few-shot subsets are bench's Dassl samples; float32
throughout (the official runs in the model's dtype, fp16 on GPU). The test split is never read here.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from bench import BenchError, Method, Part
from bench.classifier import ZeroShotHead
from bench.plugin import AtLeastOne, Range


@dataclasses.dataclass
class LPPlusPlusConfig:
    epochs: Annotated[int, AtLeastOne] = 300
    alpha_every: Annotated[int, AtLeastOne] = 10  # epochs between alpha's gradient steps
    alpha_init_scale: float = 250.0  # alpha_c starts at this x the mean own-class text logit
    momentum: Annotated[float, Range(0, 1)] = 0.9
    augment: bool = True  # train features from one augmented pass (the official); false: the test transform
    crop_scale: Annotated[tuple[float, float], Range(0, 1, min_exclusive=True)] = (0.5, 1.0)
    select_epoch: bool = True  # keep the best epoch on the few-shot val split; false: the last epoch


def step_sizes(features: torch.Tensor, labels: torch.Tensor, text: torch.Tensor,
               alpha_init_scale: float = 250.0) -> tuple[float, float, float]:
    """LP++'s data-derived ``(lr_w, lr_alpha, alpha_init)`` from normalised features [N, D], labels [N]
    and text weights [C, D]."""
    x = features.double()
    n = x.shape[0]
    lr_w = 4.0 * n / float(torch.linalg.eigvalsh(x.t() @ x).max())
    logits = x @ text.double().t()  # [N, C]
    lr_alpha = n / (4.0 * float((logits ** 2).sum(0).max()))
    own = logits[torch.arange(n), labels]
    classes = labels.unique()
    per_class = torch.stack([own[labels == c].mean() for c in classes])
    return lr_w, lr_alpha, alpha_init_scale * float(per_class.mean())


class LPPlusPlusHead(nn.Module):
    """logits = normalised f @ W^T + b + alpha * (normalised f @ T^T)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, alpha: torch.Tensor, text: torch.Tensor):
        super().__init__()
        for name, t in (("weight", weight), ("bias", bias), ("alpha", alpha), ("text", text)):
            self.register_buffer(name, t.detach().float().clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(features.float(), dim=-1)
        return f @ self.weight.t() + self.bias + self.alpha * (f @ self.text.t())


def lp_pp_logits(f, weight, bias, alpha, text_logits):
    return f @ weight.t() + bias + alpha * text_logits


class LPPlusPlus(Method):
    name = "lp_pp"
    description = ("LP++: linear probe initialised at the class centroids plus class-wise blended text logits, "
                   "step sizes from the data (Huang et al., CVPR 2024)")
    trains = "visual linear layer + class-wise text blend, full-batch GD 300 epochs, epoch chosen on few-shot val"
    changes = frozenset({Part.HEAD})
    Config = LPPlusPlusConfig
    version = "1"
    transfers_to_new_classes = False  # one weight vector per training class

    def fit(self, clf, ctx) -> dict:
        cfg: LPPlusPlusConfig = self.config
        if cfg.select_epoch and not ctx.split("val"):
            raise BenchError("lp_pp chooses its epoch on the few-shot validation split, but it is empty; "
                             "set lp_pp.select_epoch=false")
        text = clf.head.weights if isinstance(clf.head, ZeroShotHead) else ctx.text_weights()
        text = F.normalize(text.float(), dim=-1)
        transform = ctx.train_transform(tuple(cfg.crop_scale)) if cfg.augment else None
        with torch.no_grad():
            train = F.normalize(clf.adapt(ctx.features("train", transform, stream=41)[0]).float(), dim=-1)
            val = F.normalize(clf.adapt(ctx.features("val")[0]).float(), dim=-1) if ctx.split("val") else None
        labels, c, d = ctx.labels("train"), ctx.num_classes, train.shape[1]
        lr_w, lr_alpha, alpha0 = step_sizes(train, labels, text, cfg.alpha_init_scale)

        weight = nn.Parameter(torch.zeros(c, d, device=train.device).index_add_(0, labels, train))  # class sums
        bound = 1.0 / math.sqrt(d)
        bias = nn.Parameter(((torch.rand(c, generator=ctx.generator(42)) * 2 - 1) * bound).to(train.device))
        alpha = torch.full((c,), alpha0, device=train.device, requires_grad=True)
        optimizer = torch.optim.SGD([weight, bias], lr=lr_w, momentum=cfg.momentum)
        text_train = train @ text.t()
        text_val = val @ text.t() if val is not None else None
        val_labels = ctx.labels("val") if val is not None else None
        best = (-1.0, -1, None)
        start = time.perf_counter()
        for epoch in range(cfg.epochs):
            loss = F.cross_entropy(lp_pp_logits(train, weight, bias, alpha, text_train), labels)
            optimizer.zero_grad()  # W and b only: alpha's gradient keeps summing, as the official code
            loss.backward()
            optimizer.step()
            if (epoch + 1) % cfg.alpha_every == 0:
                with torch.no_grad():
                    alpha -= lr_alpha * alpha.grad
            if cfg.select_epoch:
                with torch.no_grad():
                    acc = float((lp_pp_logits(val, weight, bias, alpha, text_val).argmax(-1) == val_labels)
                                .float().mean())
                if acc >= best[0]:
                    best = (acc, epoch, [t.detach().clone() for t in (weight, bias, alpha)])
            if (epoch + 1) % 50 == 0 or epoch + 1 == cfg.epochs:
                ctx.progress(f"{self.name} epoch {epoch + 1}/{cfg.epochs} loss {float(loss.detach()):.4f}")
        seconds = time.perf_counter() - start
        chosen = best[2] if cfg.select_epoch else [weight, bias, alpha]
        clf.head = LPPlusPlusHead(*chosen, text).to(ctx.device)
        return {"trainable_params": c * d + 2 * c, "lr_w": lr_w, "lr_alpha": lr_alpha, "alpha_init": alpha0,
                "epoch": (best[1] if cfg.select_epoch else cfg.epochs - 1) + 1, "train_loss": float(loss.detach()),
                "step_seconds": seconds / cfg.epochs}
