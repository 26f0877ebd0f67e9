"""UPT (Unified Prompt Tuning; Zang et al., arXiv 2210.07225): one shared prompt, through a one-layer
transformer, gives both the text context and shallow visual prompts.

What was read where (reference: more_methods.md §3). The release (yuhangzang/UPT) was read in the fork
pedramyamini2023/UPT at 3d1640f, which makes it run: ``trainers/unified.py`` (``PromptLearner``,
``get_text_prompt`` / ``get_visual_prompt``, ``CustomCLIP``), ``clip/model.py`` (``VisionTransformer.forward_prompt``,
the shallow insertion), ``trainers/coop.py`` (the text encoder) and ``configs/trainers/Unified/vit_b16_ep{50,100,200}.yaml``.

* A shared prompt ``[1, 8, text width]`` (512 on ViT-B/16), N(0, 0.02²), passes through one post-LN block:
  ``nn.MultiheadAttention(width, 1 head, dropout=0.1)`` (sequence-first, as released), residual + dropout,
  ``norm1``; then ``norm2`` *before* the feed-forward ``Linear–ReLU–dropout–Linear`` (width -> width), residual
  + dropout. Outputs ``[:4]`` are the text context (CoOp's prompt, class name at the end; ``CTX_INIT "a photo
  of a"`` only fixes the count at 4: its embeddings are not used); outputs ``[4:]`` go through
  ``Linear(text width -> image width)`` (512 -> 768 on ViT-B/16) and are 4 shallow visual prompts, inserted
  right after the class token *before* ``ln_pre``. Both encoders frozen; cross-entropy; the whole prompt
  network is trained (1,976,064 parameters on ViT-B/16).
* What the release computes, reproduced here: the ``[1, 8, width]`` prompt is read by the sequence-first
  attention as **8 sequences of length 1**, so the tokens never attend to each other (each output depends on
  its own token; the query/key projections get zero gradient), and the block runs **twice per step**, once for
  the text half and once for the visual half, with independent dropout draws. The published numbers come
  from this computation. The token-mixing reading of the paper's prose is the named variant ``upt_mixing``
  (``mix_tokens=true``: the 8 tokens form one sequence).
* Config: SGD lr 0.002, batch 32, one constant warm-up epoch at 1e-5 then the cosine, RandomResizedCrop +
  flip; the release ships ep50/100/200 configs without saying which shot count used which, so the epochs
  follow CoOp's schedule by shots (1: 50, 2/4: 100, 8/16: 200; ImageNet 50).

The release's bugs are not reproduced: missing imports, the trainer registered as ``Unified_v6`` while its
scripts ask for ``Unified``, the call to ``forward_prompt_shallow`` (no such method; ``forward_prompt`` is the
shallow insertion it means), and the 4/4 split hard-coded (here ``n_ctx`` and ``n_visual``).

Departures, documented choices: fp32 (the release trains in fp16; ``precision=amp`` autocasts); the text
prompts run through CoOp's exact truncated / shared-prefix text path (:class:`bench.methods.coop.PromptHead`,
equal to the full 77-token pass within float tolerance); the visual prompt positions are dropped after the last
block (class-token pooling reads the same token); the prompt network's layers take PyTorch's default
initialisation under the trial's seed, as the release's do under its own.

Stacks: ``upt+mask`` learns and bakes the masks first (reused from ``mask``'s stage), then trains UPT on the
masked encoder. Base-to-new: the text context and visual prompts are class-agnostic; the head is rebuilt
for the new class names around the same prompt network.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench import Method, Part
from bench.plugin import AtLeastOne, NonNegative, Range

from ._training import DasslSGDConfig, coop_epochs
from ._visual_prompts import VisualPrompts, image_tower_width, train_through_encoder
from .coop import CoOpConfig, PromptHead, check_text_layout


@dataclasses.dataclass
class UPTConfig(DasslSGDConfig):
    n_ctx: Annotated[int, AtLeastOne] = 4  # outputs used as the text context
    n_visual: Annotated[int, AtLeastOne] = 4  # outputs used as visual prompts
    init_std: Annotated[float, NonNegative] = 0.02
    dropout: Annotated[float, Range(0, 1)] = 0.1
    mix_tokens: bool = False  # true: the prompt tokens attend to each other (the release's do not)
    truncate: bool = True  # text path: run only up to the last end token (same result; see coop)
    shared_prefix: bool = True  # text path: SOS + context once, then each class's suffix (same result)
    precision: Literal["fp32", "amp"] = "fp32"


class UnifiedPrompt(nn.Module):
    """UPT's shared prompt and the one-layer transformer it passes through."""

    def __init__(self, n_ctx: int, n_visual: int, text_width: int, image_width: int, generator: torch.Generator,
                 init_std: float = 0.02, dropout: float = 0.1, mix_tokens: bool = False):
        super().__init__()
        self.n_ctx, self.mix_tokens = n_ctx, mix_tokens
        self.prompt = nn.Parameter(torch.randn(1, n_ctx + n_visual, text_width, generator=generator) * init_std)
        self.attn = nn.MultiheadAttention(text_width, 1, dropout=dropout)  # sequence-first, as released
        self.norm1, self.norm2 = nn.LayerNorm(text_width), nn.LayerNorm(text_width)
        self.linear1, self.linear2 = nn.Linear(text_width, text_width), nn.Linear(text_width, text_width)
        self.dropout, self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.to_image = nn.Linear(text_width, image_width)

    def encoded(self) -> torch.Tensor:
        """The block's output for every prompt token [n_ctx + n_visual, text width] (one pass, own dropout)."""
        src = self.prompt  # [1, T, D]: sequence-first, i.e. T sequences of length 1
        if self.mix_tokens:
            seq = src.transpose(0, 1)  # [T, 1, D]: one sequence of T tokens
            mixed = self.attn(seq, seq, seq, need_weights=False)[0].transpose(0, 1)
        else:
            mixed = self.attn(src, src, src, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(mixed))
        src = src + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(self.norm2(src))))))
        return src[0]

    def text_context(self) -> torch.Tensor:
        return self.encoded()[:self.n_ctx]

    def visual_tokens(self) -> torch.Tensor:
        return self.to_image(self.encoded()[self.n_ctx:])


class UnifiedVisualPrompts(VisualPrompts):
    """UPT's shallow visual prompts: computed by the shared network at every image forward."""

    def __init__(self, unified: UnifiedPrompt, n_tokens: int):
        super().__init__(n_tokens, position="after_cls", through_ln_pre=True)
        self.unified = unified

    @property
    def depth(self) -> int:
        return 1

    def layer_tokens(self) -> torch.Tensor:
        return self.unified.visual_tokens().unsqueeze(0)


class UnifiedHead(nn.Module):
    """CoOp's prompt head whose context is the shared network's text output: features -> logits."""

    def __init__(self, text: PromptHead, unified: UnifiedPrompt, logit_scale: float):
        super().__init__()
        self.text, self.unified, self.logit_scale = text, unified, float(logit_scale)
        self._cache: torch.Tensor | None = None

    def text_features(self) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return self.text.encode(self.unified.text_context())
        if self._cache is None:  # evaluation: the network is fixed, compute once
            self._cache = self.text.encode(self.unified.text_context())
        return self._cache

    def train(self, mode: bool = True) -> "UnifiedHead":
        self._cache = None
        return super().train(mode)

    def for_classes(self, classnames: list[str], ctx) -> "UnifiedHead":
        """The same prompt network with other class names (base-to-new evaluation)."""
        return UnifiedHead(self.text.for_classes(classnames, ctx), self.unified, self.logit_scale).eval()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        text = F.normalize(self.text_features(), dim=-1)
        image = F.normalize(features.to(text.dtype), dim=-1)
        return (self.logit_scale * image @ text.t()).float()


class UPT(Method):
    name = "upt"
    description = ("UPT: one shared prompt through a one-layer transformer gives the text context and shallow "
                   "visual prompts (Zang et al., 2022)")
    trains = "an 8-token shared prompt, its one-layer transformer and a Linear to image width; SGD, warm-up + cosine"
    changes = frozenset({Part.IMAGE_TOKENS, Part.TEXT_PROMPT, Part.HEAD})
    Config = UPTConfig
    version = "1"
    variants = {"upt_mixing": {"mix_tokens": True,
                               "description": "UPT with the prompt tokens attending to each other (the paper's "
                                              "prose; the release's attention does not mix them)"}}

    @classmethod
    def defaults_for(cls, dataset: str, shots: int) -> dict:
        return {"epochs": coop_epochs(dataset, shots)}

    def fit(self, clf, ctx) -> dict:
        cfg: UPTConfig = self.config
        model = clf.model
        check_text_layout(model)
        image_width = image_tower_width(model.visual)
        text_width = model.token_embedding.weight.shape[1]
        unified = UnifiedPrompt(cfg.n_ctx, cfg.n_visual, text_width, image_width, ctx.generator(10), cfg.init_std,
                                cfg.dropout, cfg.mix_tokens).to(ctx.device)
        # The placeholder context (zeros) only lays out the prompts; the network's output replaces it.
        layout = CoOpConfig(n_ctx=cfg.n_ctx, init_std=0.0, truncate=cfg.truncate, shared_prefix=cfg.shared_prefix)
        text = PromptHead(model, ctx.tokenizer, ctx.data.classnames, layout, ctx.generator(12)).to(ctx.device)
        text.ctx.requires_grad_(False)
        clf.head = UnifiedHead(text, unified, clf.logit_scale)
        UnifiedVisualPrompts(unified, cfg.n_visual).install(model.visual)
        params = list(unified.parameters())
        loss = train_through_encoder(clf, ctx, params, cfg, self.name)
        clf.head.eval()
        return {"trainable_params": sum(p.numel() for p in params), "epochs": cfg.epochs,
                "text_path": "shared_prefix" if text.shared_prefix else "plain", "train_loss": loss}
