"""CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024): low-rank adapters on the attention of both encoders.

Faithful to MaxZanella/CLIP-LoRA (``lora.py``, ``loralib/``; reference: more_methods.md §5), built on
Hugging Face ``peft`` (imported here only, when a trial fits or restores ``lora``):

* Every ``nn.MultiheadAttention`` of the image and text transformers is swapped for
  :class:`SplitAttention`, the same function with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj``
  ``nn.Linear`` layers (rows ``[0:D]``, ``[D:2D]``, ``[2D:3D]`` of ``in_proj_weight``) and
  ``F.scaled_dot_product_attention``, as the official ``PlainMultiheadAttentionLoRA``. peft's own
  ``nn.MultiheadAttention`` support is a different method (one adapter on the packed in-projection plus
  an out-projection adapter, merged on every forward), so plain peft LoRA goes on the split layers.
* ``LoraConfig(r=2, lora_alpha=1, use_rslora=True, lora_dropout=0.25)`` on ``q_proj``, ``k_proj``,
  ``v_proj`` of every block of both towers: ``W x + (alpha / sqrt(r)) B A dropout(x)`` — the official
  scaling (alpha/sqrt(r), which peft calls rsLoRA) and dropout on the LoRA input only; A kaiming-uniform
  (a = sqrt(5)), B zeros, so training starts exactly at zero-shot CLIP. ViT-B/16: 184,320 parameters.
* AdamW lr 2e-4, weight decay 1e-2, betas (0.9, 0.999); cosine to 1e-6 over ``n_iters`` x shots
  iterations (500 x shots), stepped per iteration; batch 32 (the last, smaller batch of an epoch kept,
  as the official loader); RandomResizedCrop(0.08-1, bicubic) + flip; the single template
  ``"a photo of a {}."`` for every dataset, text features recomputed every iteration through the adapted
  text tower; logits = scale x cosine; cross-entropy. The last iterate is kept: no validation, nothing
  selected on any split. Evaluation: the same template through the tuned text tower (the installed
  zero-shot head).

Differences from the official code, all documented choices:

* ``logit_scale`` defaults to the model's own (``logit_scale.exp()``: 100 for OpenAI's CLIP, the official
  fixed value); set ``lora.logit_scale=100`` to force it on other weights.
* Precision ``auto`` is fp16 autocast with loss scaling on CUDA (the official) and fp32 on CPU; ``amp``
  autocasts on the trial's device (bf16 on CPU).
* Few-shot subsets are bench's Dassl samples (the official draws them with ``random.sample``).

Kept: the adapter in peft's own format (``adapter_config.json`` + ``adapter_model.safetensors``) in
``<artifact_dir>/lora/``; :func:`load_lora` reloads it onto a fresh model::

    from bench.models import load_model
    from bench.methods.lora import load_lora
    model, preprocess, tokenizer = load_model("ViT-B-16", "openai")          # the trial's model
    peft_model = load_lora(model, "results/<run>/artifacts/<trial_id>/lora")  # swaps attention, loads
    # model (== peft_model.base_model.model) now encodes images and text through the tuned towers.

In a stack ``lora+mask`` the masks are learned and baked first (on open_clip's attention), then the
attention is split and LoRA trains on the masked weights; reloading applies the masks before the adapter.
"""
from __future__ import annotations

import dataclasses
import re
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from bench import BenchError, Method, Part
from bench.classifier import ZeroShotHead
from bench.plugin import AtLeastOne, NonNegative, Positive, Range

from ._training import amp_dtype, optimizer_step, train_epochs

PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}


class SplitAttention(nn.Module):
    """``nn.MultiheadAttention``'s function with separate q/k/v/out ``nn.Linear`` layers (no dropout, no
    extra key/value bias), called as open_clip's blocks call it; returns ``(output, None)``."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, batch_first: bool = True):
        super().__init__()
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    @torch.no_grad()
    def from_mha(cls, mha: nn.MultiheadAttention) -> "SplitAttention":
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn or mha.dropout:
            raise BenchError("lora splits plain self-attention only (packed q/k/v, no key/value bias or "
                             "attention dropout); this model's attention is different")
        d, bias = mha.embed_dim, mha.in_proj_bias is not None
        out = cls(d, mha.num_heads, bias, mha.batch_first).to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)
        for i, proj in enumerate((out.q_proj, out.k_proj, out.v_proj)):
            proj.weight.copy_(mha.in_proj_weight[i * d:(i + 1) * d])
            if bias:
                proj.bias.copy_(mha.in_proj_bias[i * d:(i + 1) * d])
        out.out_proj.weight.copy_(mha.out_proj.weight)
        if bias:
            out.out_proj.bias.copy_(mha.out_proj.bias)
        return out.requires_grad_(mha.in_proj_weight.requires_grad)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if key_padding_mask is not None or need_weights:
            raise NotImplementedError("SplitAttention supports neither key_padding_mask nor need_weights")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, d = query.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, t.shape[1], self.num_heads, -1).transpose(1, 2)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:  # MultiheadAttention's True = not allowed; SDPA wants additive
                attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(
                    attn_mask, float("-inf"))
            if attn_mask.dim() == 3:  # [N * heads, L, S]
                attn_mask = attn_mask.view(n, self.num_heads, length, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype) if attn_mask is not None
                                             else None, is_causal=is_causal and attn_mask is None)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, d))
        return (out if self.batch_first else out.transpose(0, 1)), None


def towers(model: nn.Module) -> dict[str, nn.Module]:
    """The transformers of an open_clip CLIP model, by their module path: image and text."""
    out = {}
    visual = getattr(getattr(model, "visual", None), "transformer", None)
    if visual is not None:
        out["vision"] = ("visual.transformer", visual)
    text_owner = model.text if hasattr(model, "text") else model
    text = getattr(text_owner, "transformer", None)
    if text is not None:
        out["text"] = ("text.transformer" if hasattr(model, "text") else "transformer", text)
    if not all(hasattr(t, "resblocks") for _, t in out.values()) or len(out) < 2:
        raise BenchError(f"lora needs an open_clip ViT CLIP (transformer towers with resblocks); "
                         f"{type(model).__name__} is not one")
    return out


def split_attention(model: nn.Module) -> int:
    """Swap every block's ``nn.MultiheadAttention`` in both towers for :class:`SplitAttention`, in place
    (already split blocks are left); returns how many were swapped."""
    swapped = 0
    for _, tower in towers(model).values():
        for block in tower.resblocks:
            if isinstance(block.attn, nn.MultiheadAttention):
                block.attn = SplitAttention.from_mha(block.attn)
                swapped += 1
    return swapped


def target_pattern(model: nn.Module, encoder: str, params: str) -> str:
    """peft's ``target_modules`` regex: the chosen projections of every block of the chosen towers."""
    paths = [path for name, (path, _) in towers(model).items() if encoder in ("both", name)]
    projs = [PROJECTIONS[p] for p in params.replace(",", "").replace(" ", "")]
    return rf"({'|'.join(map(re.escape, paths))})\.resblocks\.\d+\.attn\.({'|'.join(projs)})"


def lora_config(model: nn.Module, rank: int, alpha: float, dropout: float, encoder: str, params: str):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, use_rslora=True, lora_dropout=dropout, bias="none",
                      target_modules=target_pattern(model, encoder, params), init_lora_weights=True)


def add_lora(model: nn.Module, config):
    """Split the attention, then put peft LoRA on ``model`` in place; returns the ``PeftModel`` (its
    ``base_model.model`` is ``model``). Only the LoRA weights require gradients."""
    from peft import get_peft_model

    split_attention(model)
    return get_peft_model(model, config)


def load_lora(model: nn.Module, path: str | Path, trainable: bool = False):
    """Reload an adapter saved by a ``lora`` trial (peft's format) onto a fresh open_clip model, in place:
    splits the attention, then ``PeftModel.from_pretrained``. Apply a ``lora+mask`` trial's masks first."""
    from peft import PeftModel

    split_attention(model)
    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


@dataclasses.dataclass
class LoRAConfig:
    rank: Annotated[int, AtLeastOne] = 2
    alpha: Annotated[float, Positive] = 1.0  # scaling alpha / sqrt(rank), the official form
    dropout: Annotated[float, Range(0, 1)] = 0.25  # on the LoRA branch's input only
    encoder: Literal["both", "vision", "text"] = "both"
    params: str = "qkv"  # projections that get an adapter: any of q, k, v, o
    n_iters: Annotated[int, AtLeastOne] = 500  # iterations per shot: n_iters x shots in all
    batch_size: Annotated[int, AtLeastOne] = 32
    lr: Annotated[float, Positive] = 2e-4
    weight_decay: Annotated[float, NonNegative] = 1e-2
    eta_min: Annotated[float, NonNegative] = 1e-6  # the cosine's floor
    crop_scale: Annotated[tuple[float, float], Range(0, 1, min_exclusive=True)] = (0.08, 1.0)
    template: str = "a photo of a {}."  # the one prompt, for every dataset
    logit_scale: Optional[Annotated[float, Positive]] = None  # None: the model's (100 for OpenAI CLIP)
    precision: Literal["auto", "fp32", "amp"] = "auto"  # auto: fp16 autocast + loss scaling on CUDA, fp32 on CPU

    def __post_init__(self):
        letters = self.params.replace(",", "").replace(" ", "")
        if not letters or any(c not in PROJECTIONS for c in letters) or len(set(letters)) != len(letters):
            raise ValueError(f"params={self.params!r}: name projections among q, k, v, o, e.g. 'qkv'")
        if "{}" not in self.template:
            raise ValueError(f"template={self.template!r} needs a '{{}}' where the class name goes")


class LoRA(Method):
    name = "lora"
    description = ("CLIP-LoRA: low-rank adapters (peft) on the q/k/v projections of every attention block of "
                   "both encoders (Zanella & Ben Ayed, CVPRW 2024)")
    trains = "rank-2 LoRA on q, k, v of both towers, AdamW + cosine over 500 x shots iterations, last iterate"
    changes = frozenset({Part.IMAGE_DELTAS, Part.TEXT_WEIGHTS})
    Config = LoRAConfig
    version = "1"

    def _install_head(self, clf, ctx) -> None:
        clf.model.eval()
        scale = self.config.logit_scale or clf.logit_scale
        templates = [self.config.template]
        clf.head = ZeroShotHead(ctx.text_weights(templates=templates), scale, templates).to(ctx.device)

    def export(self, clf, directory: Path) -> None:
        self.peft.save_pretrained(str(directory))

    def restore(self, clf, ctx, directory: Path) -> None:
        self.peft = load_lora(clf.model, directory)
        self._install_head(clf, ctx)

    def fit(self, clf, ctx) -> dict:
        cfg: LoRAConfig = self.config
        model = clf.model
        self.peft = add_lora(model, lora_config(model, cfg.rank, cfg.alpha, cfg.dropout, cfg.encoder, cfg.params))
        params = [p for p in model.parameters() if p.requires_grad]
        precision = cfg.precision if cfg.precision != "auto" else ("amp" if ctx.device.type == "cuda" else "fp32")
        autocast = ((lambda: torch.autocast(ctx.device.type, dtype=amp_dtype(ctx.device)))
                    if precision == "amp" else nullcontext)
        scaler = torch.amp.GradScaler("cuda") if precision == "amp" and ctx.device.type == "cuda" else None
        total = cfg.n_iters * ctx.spec.shots
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total, eta_min=cfg.eta_min)
        loader = ctx.loader("train", ctx.train_transform(tuple(cfg.crop_scale)), batch_size=cfg.batch_size,
                            shuffle=True, drop_last=False, generator=ctx.generator(31))
        texts = [cfg.template.format(c.replace("_", " ")) for c in ctx.data.classnames]
        tokens = ctx.tokenizer(texts).to(ctx.device)
        scale = cfg.logit_scale or clf.logit_scale

        def step(images, labels) -> float:
            with autocast():
                text = F.normalize(model.encode_text(tokens).float(), dim=-1)
                image = F.normalize(model.encode_image(images.to(ctx.device)).float(), dim=-1)
                loss = F.cross_entropy(scale * image @ text.t(), labels.to(ctx.device))
            return optimizer_step(optimizer, loss, scaler)

        epochs = -(-total // max(len(loader), 1))
        model.train()
        start = time.perf_counter()
        try:
            train_loss = train_epochs(epochs, lambda epoch: loader, step, scheduler=scheduler, per_batch=True,
                                      max_steps=total, report=(ctx.progress, self.name, max(epochs // 10, 1)))
        finally:
            model.eval()
        seconds = time.perf_counter() - start
        for p in params:
            p.requires_grad_(False)
        self._install_head(clf, ctx)
        adapter = None
        if getattr(ctx, "artifact_dir", None) is not None:
            adapter = Path(ctx.artifact_dir) / self.name
            self.export(clf, adapter)
        return {"trainable_params": sum(p.numel() for p in params), "iterations": total,
                "step_seconds": seconds / max(total, 1), "precision": precision, "train_loss": train_loss,
                "adapter": str(adapter) if adapter else None}
