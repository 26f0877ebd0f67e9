"""CoCoOp (Conditional Context Optimization; Zhou et al., CVPR 2022): CoOp's context shifted, image by image,
by a token a small network (the Meta-Net) computes from the image's feature.

Read in KaiyangZhou/CoOp: ``trainers/cocoop.py`` (prompt learner, Meta-Net, forward, training step),
``configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml`` (settings), ``COCOOP.md`` and
``scripts/cocoop/base2new_*.sh`` (protocol). The prompt path is CoOp's (``_prompt.PromptHead``, see
``coop.py``); what CoCoOp adds:

* Context: 4 vectors initialised from the token embeddings of ``"a photo of a"``, class name at the end.
* Meta-Net: ``Linear(d, d // 16) – ReLU – Linear(d // 16, width)`` with d the image feature size and width the
  text tower's (512 → 32 → 512 on ViT-B/16; 128 → 8 → 128 on ``tiny``), PyTorch's default ``nn.Linear``
  initialisation. Its input is the L2-normalised image feature; its output π(x) is added to every context
  vector, ``ctx + π(x)``.
* Per image, the prompts of all classes with that image's context run through the text encoder; logits =
  ``logit_scale · cos(image, class text)``; loss = cross-entropy. Context and Meta-Net are trained.
* SGD lr 0.002, momentum 0.9, weight decay 5e-4, **batch 1**, 10 epochs, one warm-up epoch at 1e-5 then
  cosine; RandomResizedCrop + flip; the last epoch is kept. Base-to-new: 16 shots of the base classes,
  evaluated on base and new classes (the head is rebuilt for the new class names with the learned context
  and Meta-Net).

Differences from the official code, all documented choices:

* ``class_chunk`` = N > 0 runs each image's text pass N classes at a time (the official runs all classes at
  once, which needs ~C× CoOp's activation memory: out of memory for ImageNet on 16 GB). Every prompt is
  independent of the others, so the logits and gradients are the same; only the peak memory drops.
* The text pass takes CoOp's shared-prefix path where it is exact (``shared_prefix``, default on): each
  image's start token and shifted context run once, the class names against them (``coop.py`` explains it).
  ``shared_prefix=false`` / ``truncate=false`` run the official structure.
* Precision ``auto`` is fp16 on CUDA (context, Meta-Net and text path, as the official ``PREC: fp16``), fp32
  on CPU; the image tower keeps the model's precision (as for CoOp).
* The Meta-Net's initial weights are drawn from the trial's generator (same distribution as PyTorch's
  default), so a trial is reproducible on its own.
* ``feature_views`` > 0 is a speed option (cached augmented views, as for CoOp); ``batch_size`` > 1 is allowed
  (the loss is the batch mean, as Dassl computes it).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from bench import Method, Part
from bench.plugin import AtLeastOne, NonNegative

from ._prompt import CoOpConfig, PromptHead, train_prompt


@dataclasses.dataclass
class CoCoOpConfig(CoOpConfig):
    n_ctx: Annotated[int, AtLeastOne] = 4
    ctx_init: str = "a photo of a"
    epochs: Annotated[int, AtLeastOne] = 10
    batch_size: Annotated[int, AtLeastOne] = 1
    class_chunk: Annotated[int, NonNegative] = 0  # classes per text pass of each image (0: all); same results

    def __post_init__(self):
        if self.csc:
            raise ValueError("cocoop learns one context shared by all classes; csc must be false")
        if self.class_token_position != "end":
            raise ValueError("cocoop puts the class name at the end; class_token_position must be 'end'")


def default_linear(linear: nn.Linear, generator: torch.Generator) -> nn.Linear:
    """PyTorch's default ``nn.Linear`` initialisation (uniform ±1/sqrt(fan_in) for weight and bias), drawn
    from ``generator``."""
    bound = 1.0 / math.sqrt(linear.in_features)
    with torch.no_grad():
        for t in (linear.weight, linear.bias):
            t.copy_(torch.rand(t.shape, generator=generator) * 2 * bound - bound)
    return linear


class ConditionalPromptHead(PromptHead):
    """CoCoOp's prompt learner and text encoder as a classifier head: each image's features shift the
    context by the Meta-Net's token before its text pass."""

    def __init__(self, model: nn.Module, tokenizer, classnames: list[str], cfg: CoCoOpConfig,
                 generator: torch.Generator, dtype: torch.dtype = torch.float32, template: str = ""):
        super().__init__(model, tokenizer, classnames, cfg, generator, dtype, template)
        feature_dim, width = model.visual.output_dim, self.ctx.shape[-1]
        hidden = feature_dim // 16
        self.meta_net = nn.Sequential(default_linear(nn.Linear(feature_dim, hidden), generator), nn.ReLU(),
                                      default_linear(nn.Linear(hidden, width), generator))
        self.meta_net.to(device=self.ctx.device, dtype=dtype)
        self.class_chunk = cfg.class_chunk

    def trainable(self) -> list[nn.Parameter]:
        return [self.ctx, *self.meta_net.parameters()]

    def conditional_text_features(self, image: torch.Tensor) -> torch.Tensor:
        """Text features [C, E] of every class's prompt with the context shifted for one normalised image
        feature ``image`` [E'], ``class_chunk`` classes at a time."""
        ctx = self.ctx + self.meta_net(image)
        step = self.class_chunk or self.n_cls
        return torch.cat([self.encode(ctx, slice(s, s + step)) for s in range(0, self.n_cls, step)])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        image = F.normalize(features.to(self.ctx.dtype), dim=-1)
        rows = [self.logit_scale * image[i] @ F.normalize(self.conditional_text_features(image[i]), dim=-1).t()
                for i in range(image.shape[0])]
        return torch.stack(rows).float()


class CoCoOp(Method):
    name = "cocoop"
    description = ("CoCoOp: CoOp's context shifted per image by a Meta-Net token, for classes unseen in "
                   "training (Zhou et al., CVPR 2022)")
    trains = "4 context vectors + Meta-Net (d -> d/16 -> width), batch 1, 10 epochs, SGD warm-up + cosine"
    changes = frozenset({Part.TEXT_PROMPT, Part.HEAD})
    Config = CoCoOpConfig

    def fit(self, clf, ctx) -> dict:
        cfg: CoCoOpConfig = self.config
        return train_prompt(self.name, cfg, clf, ctx, lambda dtype: ConditionalPromptHead(
            clf.model, ctx.tokenizer, ctx.data.classnames, cfg, ctx.generator(10), dtype))
