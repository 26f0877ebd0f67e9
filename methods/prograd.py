"""ProGrad (Prompt-aligned Gradient; Zhu et al., ICCV 2023): CoOp's context, updated only along directions
that do not conflict with the zero-shot model's knowledge.

Read in BeierZhu/Prompt-align (``ProGrad.public/``): ``trainers/prograd.py`` (prompt learner, templates,
teacher, losses), ``Dassl.ProGrad.pytorch/dassl/engine/trainer.py::prograd_backward_and_update`` (the
update), ``configs/trainers/ProGrad/rn50*.yaml`` and ``scripts/prograd.sh`` (settings), README (λ). The
prompt path is CoOp's (``_prompt.PromptHead``, see ``coop.py``); what ProGrad adds:

* Context: ``n_ctx`` = 16 vectors, class name at the end; with ``CTX_INIT`` (on in every config) the last k
  are the token embeddings of the dataset's hand-written template before ``{}`` (k = its space-separated
  words) and the others zero (``_prompt.template_context``). The templates (``CUSTOM_TEMPLATES``) are
  ProGrad's re-ordered versions of CoOp's, e.g. ``"a type of pet, a photo of a {}."``; bench's dataset names
  map to them in :data:`TEMPLATES` (``template`` setting, set per dataset by ``defaults_for``).
* Teacher: the frozen zero-shot classifier with the same template, ``logit_scale · cos``.
* Losses: ``xe = CE(student, y)`` and ``kl = Σ −softmax(teacher/T) · log_softmax(student/T) · T²`` (batch
  mean), T = 1.
* Update, per trainable tensor: g_kl from ``kl``, g_ce from ``xe``; where cos(g_ce, g_kl) < 0,
  ``g = g_ce − λ (g_ce · ĝ_kl) ĝ_kl``, else ``g = g_ce``; the optimizer steps on g alone (the KL gradient
  itself is never added). λ (``grad_lambda``) = 1 (``scripts/prograd.sh``); 0.8 for Flowers102, DTD and EuroSAT at 8 and 16
  shots (README).
* SGD lr 0.002, momentum 0.9, weight decay 5e-4, batch 32, one warm-up epoch at 1e-5 then cosine; epochs by
  shots as CoOp (configs ``rn50_ep50`` for 1 shot, ``rn50_ep100`` for 2/4, ``rn50`` (200) for 8/16); the
  last epoch is kept.

Differences from the official code, all documented choices:

* The projection is computed in fp32 (the official runs it in the prompt's dtype, fp16 under CUDA), and a
  zero KL gradient leaves g_ce as it is (the official divides by its norm, giving NaN).
* ``precision=amp`` works (the official ``amp`` branch crashes): both losses are scaled by the
  ``GradScaler`` before their gradients are taken; the projection is invariant to that common scale.
* The template table covers bench's dataset names; a dataset ProGrad has no template for uses its own
  hand-written prompt, and text after ``{}`` (``"a photo of an object on a {} background."``) follows the
  class name in the prompt (the official strips only a trailing ``" {}."``).
* The teacher classifies the image features the stack's encoder gives at this stage (under ``+mask``: the
  masked encoder); alone, that is the official zero-shot CLIP. No ViT-B/16 config ships with ProGrad (the
  backbone is overridden on the command line); CoOp's shot schedule and optimiser are used for it.
* As in CoOp, ``feature_views`` > 0 is a speed option (cached augmented views), and the fit reports the
  text path (shared prefix or plain).
"""
from __future__ import annotations

import dataclasses
from typing import Annotated

import torch
import torch.nn.functional as F

from bench import Method, Part
from bench.plugin import NonNegative, Positive

from ._prompt import CoOpConfig, PromptHead, train_prompt
from ._training import coop_epochs

# ProGrad's CUSTOM_TEMPLATES under bench's dataset names.
TEMPLATES = {
    "oxford_pets": "a type of pet, a photo of a {}.",
    "oxford_flowers": "a type of flower, a photo of a {}.",
    "fgvc_aircraft": "a type of aircraft, a photo of a {}.",
    "dtd": "a texture of {}.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a type of food, a photo of {}.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenet_v2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}

# README: "lambda=0.8 for Flowers102, DTD, EuroSAT" at 8 and 16 shots; 1.0 elsewhere.
LAMBDA_08 = {"oxford_flowers", "dtd", "eurosat"}


@dataclasses.dataclass
class ProGradConfig(CoOpConfig):
    template: str = ""  # hand-written prompt of the teacher and the context's initial words ("": the dataset's own)
    template_init: bool = True  # initialise the last context vectors from the template's words (CTX_INIT)
    grad_lambda: Annotated[float, NonNegative] = 1.0  # how much of the conflicting component is removed
    temperature: Annotated[float, Positive] = 1.0  # T of the distillation loss

    def __post_init__(self):
        if self.template and self.template.count("{}") != 1:
            raise ValueError(f"template {self.template!r} must hold '{{}}' exactly once")
        if self.template_init and self.ctx_init:
            raise ValueError("give ctx_init or template_init=true, not both (ctx_init needs template_init=false)")


def project(g_ce: torch.Tensor, g_kl: torch.Tensor, lambda_: float) -> torch.Tensor:
    """ProGrad's gradient: ``g_ce`` without ``lambda_`` of its component along ``g_kl`` when the two
    conflict (negative cosine); ``g_ce`` itself otherwise."""
    a, b = g_ce.float(), g_kl.float()
    norm = b.norm()
    if norm == 0:
        return g_ce
    b = b / norm
    along = (a * b).sum()
    return (a - lambda_ * along * b).to(g_ce.dtype) if along < 0 else g_ce


def losses(logits: torch.Tensor, zero_shot: torch.Tensor, labels: torch.Tensor, t: float = 1.0):
    """``(xe, kl)``: cross-entropy, and the distillation loss from the zero-shot logits at temperature t."""
    xe = F.cross_entropy(logits, labels)
    kl = F.cross_entropy(logits / t, F.softmax(zero_shot / t, dim=-1)) * t * t
    return xe, kl


def projected_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], xe: torch.Tensor,
                   kl: torch.Tensor, grad_lambda: float, scaler=None) -> torch.Tensor:
    """One ProGrad update: each parameter's ``xe`` gradient, projected off its ``kl`` gradient where they
    conflict, is the gradient the optimizer steps on (through ``scaler`` when given); returns ``xe``, detached
    (read once per epoch, as ``optimizer_step``'s losses)."""
    scaled = scaler.scale if scaler is not None else (lambda loss: loss)
    g_kl = torch.autograd.grad(scaled(kl), params, retain_graph=True)
    g_ce = torch.autograd.grad(scaled(xe), params)
    for p, a, b in zip(params, g_ce, g_kl):
        p.grad = project(a, b, grad_lambda)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return xe.detach()


class ProGrad(Method):
    name = "prograd"
    description = ("ProGrad: CoOp's context updated only where it agrees with the zero-shot prediction's "
                   "gradient (Zhu et al., ICCV 2023)")
    trains = "16 context vectors (template-initialised), CE gradient projected off the zero-shot KL gradient"
    changes = frozenset({Part.TEXT_PROMPT, Part.HEAD})
    Config = ProGradConfig

    @classmethod
    def defaults_for(cls, dataset: str, shots: int) -> dict:
        return {"epochs": coop_epochs(dataset, shots), "template": TEMPLATES.get(dataset, ""),
                "grad_lambda": 0.8 if dataset in LAMBDA_08 and shots >= 8 else 1.0}

    def fit(self, clf, ctx) -> dict:
        cfg: ProGradConfig = self.config
        template = cfg.template or ctx.data.template
        teacher = ctx.text_weights(templates=[template])  # [C, E], normalised
        scale = clf.logit_scale

        def objective(logits, feats, y):
            with torch.no_grad():
                zero_shot = scale * F.normalize(feats.float(), dim=-1) @ teacher.t()
            return losses(logits, zero_shot, y, cfg.temperature)

        def update(optimizer, both, scaler) -> float:
            return projected_step(optimizer, clf.head.trainable(), *both, cfg.grad_lambda, scaler)

        out = train_prompt(self.name, cfg, clf, ctx, lambda dtype: PromptHead(
            clf.model, ctx.tokenizer, ctx.data.classnames, cfg, ctx.generator(10), dtype,
            template=template if cfg.template_init else ""), objective, update)
        return {**out, "grad_lambda": cfg.grad_lambda, "template": template}
