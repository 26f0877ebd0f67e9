"""R-AMT: regularized attention mask tuning (Zheng et al., ICCV 2023) — the ``mask`` plugin.

Learns a binary mask on the frozen image encoder's key weights — the patch embedding (``conv1``) and
every attention block's ``in_proj_weight`` / ``out_proj.weight`` (``mask.mlp=true`` adds the MLP
weights, ``mask.layers=8-11`` picks blocks) — with the zero-shot text head as classifier, then bakes
``W <- W * M`` into ``clf.model.visual``. Spec: reference/rmt.md; defaults follow the released configs.

* Scores start at 1e-2 > threshold 5e-3, so training starts exactly at zero-shot CLIP; a weight is
  kept if and only if its score > threshold (forward, sparsity and saved file alike); the binarizer
  passes gradients straight through.
* Loss: CE(head(masked features), y) + 1e-4 * sum_t ||score_t||_2 (un-squared L2 per tensor).
* GDR (``mask.gdr=true``, R-AMT): per score element, keep the task gradient with probability
  P = 1/2 (1 + sign(g) (g + g_kl) / (|g| + |g_kl| + 1e-8)), g_kl the gradient of the soft-target loss
  to the unmasked encoder's logits (T = 1); applied ((1 - lambda) + lambda 1[P > U]) g. The KL
  gradient is never applied. ``mask.gdr=false`` is AMT: a plain step on g (it trains, unlike the
  official code). ``mask.lambda_table=readme`` takes lambda from the README's 16-shot table.
* One step = teacher forward under ``no_grad`` + ONE student forward + two ``autograd.grad`` calls.

Classifier: the head the classifier holds when mask fits (the encoder slot fits first, so that is the
harness's zero-shot head) — training starts exactly at the ``zeroshot`` row. R-AMT's trainer
lower-cases class names; ``mask.lowercase=true`` trains the masks against lower-cased text weights
instead (the evaluated head is not the encoder slot's to change, so it stays as built).

Stacks (``X+mask``), sequential recipe (rmt.md §14): 1. learn the masks as above on the zero-shot
head; 2. bake them into ``clf.model.visual`` in place, the masked encoder then frozen like the original;
3. the harness records the new encoder state (``ctx.encoder_id``) and fits X, unchanged, on the masked
encoder. The learned stage is reused by every stack with the same data, seed and mask settings.

Recorded: ``mask_sparsity`` = % of the masked weights switched off (the paper's "2.56 %" denominator),
``mask_sparsity_encoder`` = % of all image-encoder parameters switched off, ``trainable_params`` = number
of mask scores, ``masks_file`` = bit-packed masks (``<artifact_dir>/mask/mask.safetensors``).

Reloading a tuned encoder::

    from bench.models import load_model
    from bench.methods.mask import apply_masks, load_masks
    model, preprocess, tokenizer = load_model("tiny", "bundled")           # the trial's model
    apply_masks(model, load_masks("<artifact_dir>/mask/mask.safetensors"))  # W <- W * M, in place
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Annotated, Callable, Literal, Mapping, Optional

import torch
import torch.nn.functional as F

from bench import Method, Part
from bench.plugin import AtLeastOne, NonNegative, Positive, Range, Search
from bench.classifier import ZeroShotHead

from ._training import train_epochs
from ._masking import (LAYERS, apply_masks, binary_masks, gdr_gradient, load_masks, masked_forward, parse_layers,
                       save_masks, select_masked, sparsity)

__all__ = ["MaskTuning", "apply_masks", "load_masks", "save_masks", "readme_lambda"]

# README prose (rmt.md §9): lambda 0.3 at 16 shots except these three; 1.0 otherwise.
MASKS_FILE = "mask.safetensors"
_README_LAMBDA_ONE = {"imagenet", "sun397", "food101"}


def readme_lambda(dataset: str, shots: int) -> float:
    return 1.0 if shots != 16 or dataset.lower() in _README_LAMBDA_ONE else 0.3


def soft_target_ce(student: torch.Tensor, teacher: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """T^2 * mean_i sum_c -softmax(teacher/T) log softmax(student/T): the official KL term."""
    return -(F.softmax(teacher / t, -1) * F.log_softmax(student / t, -1)).sum(-1).mean() * t * t


def task_loss(logits, labels, scores: Mapping[str, torch.Tensor], reg_weight: float) -> torch.Tensor:
    reg = sum(s.norm() for s in scores.values()) if reg_weight else 0.0
    return F.cross_entropy(logits, labels) + reg_weight * reg


def bf16_autocast(device: torch.device) -> Callable:
    """A factory of bf16 autocast contexts on ``device``'s type (``mask.bf16``): CUDA on a GPU, and CPU
    autocast on a CPU, so the mixed-precision path can be run and checked without a GPU."""
    return lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def rmt_step(visual, head: Callable, scores: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
             images: torch.Tensor, labels: torch.Tensor, *, threshold: float, reg_weight: float,
             gdr: bool, lam: float, temperature: float = 1.0, generator: torch.Generator | None = None,
             autocast=contextlib.nullcontext, teacher_eval: bool = True) -> torch.Tensor:
    """One R-AMT (``gdr``) or AMT step on ``scores``; returns the task loss (detached, on the device).

    The teacher (the unmasked tower) runs under ``no_grad`` and, by default, in eval mode: CLIP ViTs have
    no train/eval-dependent layers, and eval mode lets PyTorch use its fused inference attention
    (~25 % faster; logits equal to ~1e-6). ``teacher_eval=False`` keeps the tower's current mode.
    """
    params = list(scores.values())
    if gdr:
        mode = visual.training
        visual.train(mode and not teacher_eval)
        try:
            with torch.no_grad(), autocast():
                teacher = head(visual(images)).float()
        finally:
            visual.train(mode)
    with autocast():
        logits = head(masked_forward(visual, scores, threshold, images)).float()
    loss = task_loss(logits, labels, scores, reg_weight)
    if gdr:
        g_kl = torch.autograd.grad(soft_target_ce(logits, teacher, temperature), params, retain_graph=True)
    grads = torch.autograd.grad(loss, params)
    for i, (s, g) in enumerate(zip(params, grads)):
        if gdr and lam:
            u = torch.rand(g.shape, generator=generator, device=g.device, dtype=g.dtype)
            g = gdr_gradient(g, g_kl[i], lam, u)
        s.grad = g
    opt.step()
    return loss.detach()


def count_step(ctx, images: int, gdr: bool) -> None:
    """The encoder work of one step in the trial's ledger: the student's forward and backward passes (two
    backward with GDR: the KL and the task gradients) and, with GDR, the teacher's forward."""
    ledger = getattr(ctx, "ledger", None)
    if ledger is not None:
        ledger.forward("train", images)
        ledger.backward("train", images * (2 if gdr else 1))
        if gdr:
            ledger.forward("teacher", images)


class MaskTuning(Method):
    """R-AMT binary masks on the image encoder; in a stack ``X+mask``: masks first (on the zero-shot
    head), baked into the encoder, then X fitted on the masked encoder."""

    name = "mask"
    description = ("R-AMT: binary masks on the image encoder's patch embedding and attention weights "
                   "(GDR-regularised); in a stack the masks are learned first on the zero-shot head, baked "
                   "into the encoder, then the other method is fitted on the masked encoder")
    trains = "one real score per masked weight (hard threshold, straight-through), Adam, cosine"
    changes = frozenset({Part.IMAGE_WEIGHTS})
    version = "1"
    stacked_gain = True  # "X+mask vs X": what R-AMT adds on top of a method
    row_fields = ("mask_sparsity", "mask_sparsity_encoder")
    # AMT, the paper's ablation without GDR (published as 'amt')
    variants = {"amt": {"gdr": False, "description": "AMT: R-AMT's binary masks trained without gradient dropout"}}

    @dataclasses.dataclass
    class Config:
        lr: Annotated[float, Positive, Search(low=1e-5, high=1e-3, log=True)] = 8e-5
        epochs: Annotated[int, AtLeastOne] = 30
        steps: Optional[Annotated[int, AtLeastOne]] = None  # fixed number of steps (cosine over steps); overrides epochs
        batch_size: Annotated[int, AtLeastOne] = 32
        crop_scale_min: Annotated[float, Range(0, 1, min_exclusive=True)] = 0.5  # RandomResizedCrop scale (min, 1.0)
        init: float = 1e-2
        threshold: Annotated[float, Search(low=1e-3, high=9e-3)] = 5e-3  # below init: training starts at zero-shot
        reg_weight: Annotated[float, NonNegative] = 1e-4
        gdr: bool = True  # false: AMT
        gdr_lambda: Annotated[float, Range(0, 1), Search(choices=(0.3, 0.5, 1.0))] = 1.0  # the README's values
        lambda_table: Literal["", "readme"] = ""  # "readme": the README's per-dataset 16-shot lambda (overrides gdr_lambda)
        gdr_temperature: Annotated[float, Positive] = 1.0
        mlp: bool = False
        layers: str = "all"  # blocks to mask: "all", "8-11", "0,5,-1"
        patch_embed: bool = True
        lowercase: bool = False  # train against lower-cased class-name text weights (R-AMT's trainer)
        bf16: bool = False  # bf16 autocast of the forward passes, on the trial's device (CUDA or CPU)

        def __post_init__(self):
            if not LAYERS.match(str(self.layers).replace(" ", "")):
                raise ValueError(f"layers={self.layers!r}: write 'all' or block indices and ranges, e.g. '8-11' or '0,5,-1'")

    @classmethod
    def defaults_for(cls, dataset: str, shots: int) -> dict:
        return {"lr": 3e-5, "epochs": 10} if dataset.lower() == "imagenet" else {}

    @classmethod
    def check_model(cls, config, image_blocks: int | None) -> None:
        if image_blocks is not None:
            try:
                parse_layers(str(config.layers), image_blocks)
            except ValueError as err:
                from bench import BenchError
                raise BenchError(f"{cls.name}.{err}") from None

    @classmethod
    def switched_off(cls, artifact_dir: Path) -> dict[str, float] | None:
        path = Path(artifact_dir) / cls.name / MASKS_FILE
        if not path.is_file():
            return None
        return {name: 100.0 * float((~mask).sum()) / max(mask.numel(), 1) for name, mask in load_masks(path).items()}

    # stage reuse: the masks learned for `mask` serve `coop+mask` etc. on the same data and seed
    def export(self, clf, directory: Path) -> None:
        save_masks(self.masks, Path(directory) / MASKS_FILE)

    def restore(self, clf, ctx, directory: Path) -> None:
        self.masks = load_masks(Path(directory) / MASKS_FILE)
        apply_masks(clf.model.visual, self.masks)

    @classmethod
    def plan_work(cls, config, plan) -> None:
        plan.trained_stage(config.batch_size, config.epochs, config.steps, backward=2 if config.gdr else 1,
                           teacher=config.gdr)

    def fit(self, clf, ctx) -> dict:
        cfg = self.config
        visual = clf.model.visual
        try:
            names = select_masked(visual, cfg.mlp, cfg.layers, cfg.patch_embed)
        except ValueError as err:
            from bench import BenchError
            raise BenchError(f"mask: {err}") from None
        lam = readme_lambda(ctx.spec.dataset, ctx.spec.shots) if cfg.lambda_table else cfg.gdr_lambda
        params = dict(visual.named_parameters())
        scores = {n: torch.full_like(params[n], cfg.init, dtype=torch.float32, requires_grad=True) for n in names}
        head = clf.logits_from_features
        if cfg.lowercase:
            head = ZeroShotHead(ctx.text_weights(lower=True), clf.logit_scale).to(ctx.device)

        # bf16 when the setting or the run's precision asks for it (TF32 follows the run's precision)
        bf16 = cfg.bf16 or getattr(ctx, "precision", "fp32") == "bf16"
        autocast = bf16_autocast(ctx.device) if bf16 else contextlib.nullcontext
        loader = ctx.loader("train", ctx.train_transform((cfg.crop_scale_min, 1.0)), batch_size=cfg.batch_size,
                            shuffle=True, drop_last=True, generator=ctx.generator(11))
        per_epoch = max(len(loader), 1)
        total = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch
        epochs = math.ceil(total / per_epoch)
        opt = torch.optim.Adam(scores.values(), lr=cfg.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.steps or cfg.epochs, 1))
        u_gen = torch.Generator(device=ctx.device).manual_seed(int(torch.randint(2**62, (1,),
                                                                                  generator=ctx.generator(12))))
        done = [0, float("nan")]  # steps taken, the last step's loss

        def step(images, labels) -> torch.Tensor:
            count_step(ctx, len(labels), cfg.gdr)
            done[1] = rmt_step(visual, head, scores, opt, images.to(ctx.device), labels.to(ctx.device),
                               threshold=cfg.threshold, reg_weight=cfg.reg_weight, gdr=cfg.gdr, lam=lam,
                               temperature=cfg.gdr_temperature, generator=u_gen, autocast=autocast)
            done[0] += 1
            return done[1]

        def detail() -> str:
            return f" step {done[0]}/{total} off {sparsity(binary_masks(scores, cfg.threshold))[0]:.2f}%"

        was_training = visual.training
        visual.train()
        try:  # cosine per epoch (the paper); with a fixed step count, per step over those steps
            train_epochs(epochs, lambda epoch: loader, step, scheduler=sched, per_batch=cfg.steps is not None,
                         max_steps=total, report=(ctx.progress, self.name, max(epochs // 10, 1)), detail=detail,
                         val_report=lambda epoch: ctx.report_epoch(epoch, lambda images: clf.logits_from_features(
                             masked_forward(visual, scores, cfg.threshold, images))))
        finally:
            visual.train(was_training)
        steps_taken, loss = done[0], float(done[1])

        masks = binary_masks(scores, cfg.threshold)
        off, off_encoder = sparsity(masks, visual)
        apply_masks(visual, masks)  # bake: the masked encoder is now frozen like the original
        self.masks = masks
        masks_file = None
        if getattr(ctx, "artifact_dir", None) is not None:
            masks_file = str(save_masks(masks, Path(ctx.artifact_dir) / self.name / MASKS_FILE))
        return {"trainable_params": sum(s.numel() for s in scores.values()), "mask_sparsity": off,
                "mask_sparsity_encoder": off_encoder, "masks_file": masks_file, "gdr_lambda": lam,
                "steps": steps_taken, "train_loss": loss}
