"""CoOp (Context Optimization; Zhou et al., IJCV 2022): learned prompt context vectors in the text head.

Faithful to KaiyangZhou/CoOp ``trainers/coop.py`` with Dassl's defaults (reference: baselines.md §2):

* ``n_ctx`` (16) context vectors of the text tower's width, initialised N(0, 0.02²) or from the token
  embeddings of ``ctx_init`` words; one shared context or one per class (``csc``); the class-name tokens
  placed at the ``end`` (default), ``middle`` or ``front`` of the context.
* Prompts are assembled in token-embedding space from a frozen prefix (SOS) and suffix (class tokens,
  ``.``, EOT, padding) of the tokenised placeholder prompt ``"X X ... X <class>."``, run through open_clip's
  text transformer with its causal mask, pooled at the end token (``text_global_pool`` with the model's
  pooling, i.e. ``argmax`` of the token ids for CLIP) and projected. Text features are recomputed every
  forward, for all classes; logits = ``logit_scale.exp()`` × cosine; loss = cross-entropy.
* SGD lr 0.002, momentum 0.9, weight decay 5e-4; one warm-up epoch at 1e-5, then the cosine over
  ``epochs`` shifted by one epoch (stepped per epoch); batch 32; epochs by shots (1: 50, 2/4: 100,
  8/16: 200, ImageNet: 50); RandomResizedCrop(0.08-1) + flip; the last epoch's context is kept (CoOp's
  ``last_step``: no model selection, so nothing is chosen on any split).

Differences from the official code, all documented choices:

* Precision ``auto`` = fp16 on CUDA (as CoOp: context and text path in fp16, plain SGD without loss
  scaling) and fp32 on CPU. In fp16 the text path is a half-precision copy held by the head; the image
  tower keeps the model's precision (fp32 under open_clip) and its features are cast to fp16, whereas
  CoOp's ``clip.build_model`` runs the image tower in fp16 too. Logits leave the head in fp32.
* ``truncate`` (default on) runs the text transformer only up to the longest prompt's end token. With the
  causal mask no position attends to later ones, so the pooled features are the same as with the full
  77 tokens (up to float rounding) at a fraction of the cost.
* ``ctx_init`` counts its context length in BPE tokens (CoOp counts words; the same for ordinary words),
  and with ``csc`` the initial words are copied to every class (CoOp ignores ``csc`` when given words).
* Image features come from the frozen encoder under ``no_grad`` (through any adapter a stack installed
  before), fresh augmentation every epoch as CoOp. ``feature_views=V`` > 0 is a speed option that caches V
  augmented passes and cycles them over the epochs instead (not the official behaviour).

Only open_clip's ``CLIP`` text layout is supported; ``CustomTextCLIP`` models (text tower under
``model.text``: SigLIP, EVA, HF text towers) are rejected with a BenchError.
"""
from __future__ import annotations

import copy
import dataclasses
from contextlib import nullcontext
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench import BenchError, Method, Slot
from bench.plugin import AtLeastOne, NonNegative, Positive, Range

from ._training import coop_epochs, resolve_precision, set_lr, through_adapters, train_feature_batches, warmup_cosine_lr

POSITIONS = ("end", "middle", "front")


@dataclasses.dataclass
class CoOpConfig:
    n_ctx: Annotated[int, AtLeastOne] = 16  # number of context vectors (ignored when ctx_init gives words)
    ctx_init: str = ""  # e.g. "a photo of a": initialise the context from these words' embeddings
    csc: bool = False  # class-specific context (one context per class)
    class_token_position: Literal["end", "middle", "front"] = "end"
    init_std: Annotated[float, NonNegative] = 0.02
    epochs: Annotated[int, AtLeastOne] = 200  # set by shots in defaults_for
    batch_size: Annotated[int, AtLeastOne] = 32
    lr: Annotated[float, Positive] = 0.002
    momentum: Annotated[float, Range(0, 1)] = 0.9
    weight_decay: Annotated[float, NonNegative] = 5e-4
    warmup_epochs: Annotated[int, NonNegative] = 1
    warmup_lr: Annotated[float, NonNegative] = 1e-5
    crop_scale: Annotated[tuple[float, float], Range(0, 1, min_exclusive=True)] = (0.08, 1.0)
    precision: Literal["auto", "fp16", "fp32", "amp"] = "auto"  # auto: fp16 on cuda, fp32 on cpu
    truncate: bool = True  # run the text transformer only up to the last end token (same result)
    feature_views: Annotated[int, NonNegative] = 0  # 0: fresh augmentation through the encoder every epoch (CoOp); V: V cached views


class TextTower(nn.Module):
    """The pieces of an open_clip ``CLIP`` text tower that run after the token embedding."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.transformer = model.transformer
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection
        self.positional_embedding = model.positional_embedding
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)
        self.pool_type = getattr(model, "text_pool_type", "argmax")
        self.eos_id = getattr(model, "text_eos_id", None)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.get_cast_dtype()

    def pool_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """The token index each prompt is pooled at (the end token for CLIP's argmax pooling)."""
        from open_clip.transformer import text_global_pool

        pos = torch.arange(ids.shape[1], device=ids.device, dtype=torch.float32)
        pos = pos.view(1, -1, 1).expand(ids.shape[0], -1, 1)
        return text_global_pool(pos, ids, self.pool_type, eos_token_id=self.eos_id).view(-1).long()

    def forward(self, embeds: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        n = embeds.shape[1]
        cast = self.dtype
        x = embeds.to(cast) + self.positional_embedding[:n].to(cast)
        mask = self.attn_mask[:n, :n] if self.attn_mask is not None else None
        x = self.ln_final(self.transformer(x, attn_mask=mask))
        x = text_global_pool(x, ids[:, :n], self.pool_type, eos_token_id=self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection if self.text_projection is not None else x


def check_text_layout(model: nn.Module) -> None:
    import open_clip

    custom = getattr(open_clip, "CustomTextCLIP", None)
    needed = ("token_embedding", "transformer", "ln_final", "positional_embedding", "text_projection")
    if (custom is not None and isinstance(model, custom)) or not all(hasattr(model, a) for a in needed):
        raise BenchError(
            f"coop needs open_clip's CLIP text layout, but {type(model).__name__} keeps its text tower under "
            "model.text (CustomTextCLIP: SigLIP, EVA, HF text); run coop with a CLIP model such as ViT-B-16")


def token_count(tokenizer, text: str) -> int:
    """BPE tokens of ``text`` (between SOT and EOT)."""
    ids = tokenizer([text])[0]
    return int(ids.argmax()) - 1


class PromptHead(nn.Module):
    """CoOp's prompt learner + text encoder as a classifier head: features -> logits over classes."""

    def __init__(self, model: nn.Module, tokenizer, classnames: list[str], cfg: CoOpConfig,
                 generator: torch.Generator, dtype: torch.dtype = torch.float32):
        super().__init__()
        check_text_layout(model)
        if cfg.class_token_position not in POSITIONS:
            raise BenchError(f"bad value {cfg.class_token_position!r} for 'coop.class_token_position': "
                             f"choose one of {', '.join(POSITIONS)}")
        device = model.token_embedding.weight.device
        tower = TextTower(model)
        self.tower = copy.deepcopy(tower).to(dtype) if dtype != tower.dtype else tower
        self.logit_scale = float(model.logit_scale.exp())
        self.position = cfg.class_token_position
        names = [c.replace("_", " ") for c in classnames]
        width = model.token_embedding.weight.shape[1]
        embed = model.token_embedding
        with torch.no_grad():
            init = cfg.ctx_init.replace("_", " ").strip()
            if init:
                n_ctx = token_count(tokenizer, init)
                vectors = embed(tokenizer([init]).to(device))[0, 1:1 + n_ctx].float()
                if cfg.csc:
                    vectors = vectors.unsqueeze(0).repeat(len(names), 1, 1)
                prefix_text = init
            else:
                n_ctx = cfg.n_ctx
                if n_ctx < 1:
                    raise BenchError(f"coop.n_ctx must be at least 1, got {n_ctx}")
                shape = (len(names), n_ctx, width) if cfg.csc else (n_ctx, width)
                vectors = torch.randn(shape, generator=generator) * cfg.init_std
                prefix_text = " ".join(["X"] * n_ctx)
            ids = tokenizer([f"{prefix_text} {name}." for name in names]).to(device)
            tokens = embed(ids).to(dtype)
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(vectors.to(device=device, dtype=dtype))
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("token_prefix", tokens[:, :1].clone())
        self.register_buffer("token_suffix", tokens[:, 1 + n_ctx:].clone())
        self.name_lens = [token_count(tokenizer, name) for name in names]
        self.length = ids.shape[1]
        self._rebuild = (model, tokenizer, cfg, dtype)  # a tuple: not registered as a submodule
        if cfg.truncate and self.tower.pool_type in ("argmax", "eos"):
            self.length = int(self.tower.pool_positions(ids).max()) + 1
        self._cache: tuple | None = None

    @property
    def n_cls(self) -> int:
        return self.token_prefix.shape[0]

    def prompts(self) -> torch.Tensor:
        """The assembled prompt embeddings [C, L, D] (L: the truncated length)."""
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        prefix, suffix = self.token_prefix, self.token_suffix[:, :self.length - 1 - self.n_ctx]
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        half = self.n_ctx // 2
        rows = []
        for i, n in enumerate(self.name_lens):
            name, rest = suffix[i:i + 1, :n], suffix[i:i + 1, n:]
            c = ctx[i:i + 1]
            if self.position == "middle":
                rows.append(torch.cat([prefix[i:i + 1], c[:, :half], name, c[:, half:], rest], dim=1))
            else:  # front
                rows.append(torch.cat([prefix[i:i + 1], name, c, rest], dim=1))
        return torch.cat(rows, dim=0)

    def text_features(self) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return self.tower(self.prompts(), self.ids[:, :self.length])
        key = (self.ctx._version, self.ctx.data_ptr(), self.ctx.device)
        if self._cache is None or self._cache[0] != key:  # evaluation: the context is fixed, compute once
            self._cache = (key, self.tower(self.prompts(), self.ids[:, :self.length]))
        return self._cache[1]

    def for_classes(self, classnames: list[str], ctx) -> "PromptHead":
        """The learned context with other class names (base-to-new evaluation)."""
        if self.ctx.dim() == 3:
            raise BenchError("coop with csc=true learns one context per class and cannot name new classes; "
                             "use coop.csc=false for base-to-new")
        model, tokenizer, cfg, dtype = self._rebuild
        head = PromptHead(model, tokenizer, classnames, cfg, torch.Generator(), dtype)
        with torch.no_grad():
            head.ctx.copy_(self.ctx)
        return head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        text = F.normalize(self.text_features(), dim=-1)
        image = F.normalize(features.to(text.dtype), dim=-1)
        return (self.logit_scale * image @ text.t()).float()


class CoOp(Method):
    name = "coop"
    description = "CoOp: learned prompt context vectors replace the hand-written prompt (Zhou et al., IJCV 2022)"
    trains = "16 context vectors of the text prompt, SGD with warm-up + cosine, last epoch kept"
    slot = Slot.HEAD
    Config = CoOpConfig
    version = "1"

    @classmethod
    def defaults_for(cls, dataset: str, shots: int) -> dict:
        return {"epochs": coop_epochs(dataset, shots)}

    def fit(self, clf, ctx) -> dict:
        cfg: CoOpConfig = self.config
        precision = resolve_precision(cfg.precision, ctx.device, self.name)
        dtype = torch.float16 if precision == "fp16" else torch.float32
        head = PromptHead(clf.model, ctx.tokenizer, ctx.data.classnames, cfg, ctx.generator(10), dtype)
        head = head.to(ctx.device)
        clf.head = head
        optimizer = torch.optim.SGD([head.ctx], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        scaler = torch.amp.GradScaler("cuda") if precision == "amp" else None
        transform = ctx.train_transform(tuple(cfg.crop_scale))

        epoch_batches = train_feature_batches(clf, ctx, transform, cfg.batch_size, ctx.generator(11),
                                              cfg.feature_views or None)

        head.train()
        losses: list[float] = []
        for epoch in range(cfg.epochs):
            set_lr(optimizer, warmup_cosine_lr(epoch, cfg.lr, cfg.epochs, cfg.warmup_epochs, cfg.warmup_lr))
            losses = []
            for feats, y in epoch_batches(epoch):
                with torch.no_grad():
                    feats = through_adapters(clf, feats)
                with (torch.autocast("cuda", dtype=torch.float16) if scaler is not None else nullcontext()):
                    loss = F.cross_entropy(head(feats), y)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                losses.append(float(loss.detach()))
            if (epoch + 1) % 10 == 0 or epoch + 1 == cfg.epochs:
                ctx.progress(f"coop epoch {epoch + 1}/{cfg.epochs} loss {sum(losses) / max(len(losses), 1):.4f}")
        head.eval()
        head.ctx.requires_grad_(False)
        return {"trainable_params": head.ctx.numel(), "precision": precision, "epochs": cfg.epochs,
                "n_ctx": head.n_ctx, "train_loss": sum(losses) / max(len(losses), 1)}
