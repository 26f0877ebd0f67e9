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
* Precision ``amp`` autocasts the head's forward on the trial's device: fp16 with loss scaling on CUDA,
  bf16 on CPU (where ``fp16`` is refused).
* ``truncate`` (default on) runs the text transformer only up to the longest prompt's end token. With the
  causal mask no position attends to later ones, so the pooled features are the same as with the full
  77 tokens (up to float rounding) at a fraction of the cost.
* ``shared_prefix`` (default on) goes further where it is exact: with the class name at the ``end`` and
  one shared context (not ``csc``), every prompt starts with the same start token and context vectors,
  and under the causal mask their hidden states do not depend on the class. They run once per step as
  one sequence; each class's name tokens, period and end token run against that prefix — in every layer
  their queries attend to the prefix's keys/values followed by their own causal suffix
  (``scaled_dot_product_attention``, open_clip's block reproduced from its own weights: pre-LN,
  ``nn.MultiheadAttention``'s packed projections, its MLP, LayerScale). The context's gradient flows
  through the prefix once instead of C times. ViT-B/16's text tower, 100 classes, 2-core CPU: 2.4-2.9x
  faster than the truncated path, 8-10x than the full 77 tokens (``benchmarks/coop_step.py``). The
  official structure — all C full prompts through the transformer — is ``truncate=false`` (or
  ``shared_prefix=false`` for the truncated plain path); features and context gradients agree with it
  within float tolerance. The ``middle``/``front`` positions, ``csc``, and text towers other than
  open_clip's plain causal blocks always take the plain path; the fit reports which ran (``text_path``).
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

from bench import BenchError, Method, Part
from bench.plugin import AtLeastOne, NonNegative

from ._training import (DasslSGDConfig, amp_dtype, coop_epochs, optimizer_step, resolve_precision, train_epochs, train_feature_batches,
                        warmup_cosine)

POSITIONS = ("end", "middle", "front")


@dataclasses.dataclass
class CoOpConfig(DasslSGDConfig):
    n_ctx: Annotated[int, AtLeastOne] = 16  # number of context vectors (ignored when ctx_init gives words)
    ctx_init: str = ""  # e.g. "a photo of a": initialise the context from these words' embeddings
    csc: bool = False  # class-specific context (one context per class)
    class_token_position: Literal["end", "middle", "front"] = "end"
    init_std: Annotated[float, NonNegative] = 0.02
    precision: Literal["auto", "fp16", "fp32", "amp"] = "auto"  # auto: fp16 on cuda, fp32 on cpu
    truncate: bool = True  # run the text transformer only up to the last end token (same result)
    feature_views: Annotated[int, NonNegative] = 0  # 0: fresh augmentation through the encoder every epoch (CoOp); V: V cached views
    shared_prefix: bool = True  # end position, shared context: run SOS + context once, then each class's suffix


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
        return self.project(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection if self.text_projection is not None else x

    def supports_shared_prefix(self) -> bool:
        """Whether :meth:`forward_shared` reproduces this tower exactly: open_clip's plain pre-LN blocks
        with ``nn.MultiheadAttention`` (packed q/k/v, no extra key/value bias, no dropout), the causal
        mask, and pooling at the end token."""
        from open_clip.transformer import ResidualAttentionBlock

        def plain(block) -> bool:
            a = getattr(block, "attn", None)
            return (type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv")
                    and isinstance(a, nn.MultiheadAttention) and a._qkv_same_embed_dim
                    and a.bias_k is None and not a.add_zero_attn and a.dropout == 0.0)

        mask = self.attn_mask
        causal = mask is not None and torch.equal(
            mask, torch.zeros_like(mask).masked_fill(torch.ones_like(mask, dtype=torch.bool).triu(1), float("-inf")))
        blocks = getattr(self.transformer, "resblocks", [])
        return causal and self.pool_type in ("argmax", "eos") and len(blocks) > 0 and all(map(plain, blocks))

    def forward_shared(self, prefix: torch.Tensor, suffix: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        """Text features of prompts ``[prefix | suffix_c]`` that all start with the same ``prefix``.

        ``prefix`` [1, P, D] and ``suffix`` [C, S, D] are token embeddings, ``pool`` [C] each prompt's
        end-token index within its suffix. Under the causal mask the prefix's hidden states do not depend
        on what follows, so the prefix runs once; in every layer each suffix's queries attend to the
        prefix's keys/values followed by its own (causal within the suffix).
        """
        cast = self.dtype
        p, s = prefix.shape[1], suffix.shape[1]
        pos = self.positional_embedding[:p + s].to(cast)
        x_p, x_s = prefix.to(cast) + pos[:p], suffix.to(cast) + pos[p:]
        allowed = torch.ones(s, p + s, dtype=torch.bool, device=x_s.device).tril(p)
        blocks = self.transformer.resblocks
        for i, block in enumerate(blocks):
            x_p, x_s = shared_prefix_block(block, x_p, x_s, allowed, last=i == len(blocks) - 1)
        pooled = x_s[torch.arange(x_s.shape[0], device=x_s.device), pool]
        return self.project(self.ln_final(pooled))


def _heads(attn: nn.MultiheadAttention, x: torch.Tensor) -> list[torch.Tensor]:
    """q, k, v of ``x`` [N, L, D] as [N, heads, L, head_dim], from the block's packed projection."""
    n, length, _ = x.shape
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    return [t.view(n, length, attn.num_heads, -1).transpose(1, 2) for t in qkv.chunk(3, dim=-1)]


def _merge(attn: nn.MultiheadAttention, o: torch.Tensor) -> torch.Tensor:
    n, heads, length, hd = o.shape
    return attn.out_proj(o.transpose(1, 2).reshape(n, length, heads * hd))


def shared_prefix_block(block, x_p: torch.Tensor, x_s: torch.Tensor, allowed: torch.Tensor, last: bool = False):
    """One open_clip ``ResidualAttentionBlock`` (pre-LN attention + MLP, LayerScale) over a shared prefix
    [1, P, D] and C suffixes [C, S, D]; ``allowed`` [S, P + S] is the suffix's attention mask. In the
    ``last`` block the prefix's own output is not needed (only its keys/values), so it is not computed."""
    attn = block.attn
    q_p, k_p, v_p = _heads(attn, block.ln_1(x_p))
    q_s, k_s, v_s = _heads(attn, block.ln_1(x_s))
    c = x_s.shape[0]
    k = torch.cat([k_p.expand(c, -1, -1, -1), k_s], dim=2)
    v = torch.cat([v_p.expand(c, -1, -1, -1), v_s], dim=2)
    x_s = x_s + block.ls_1(_merge(attn, F.scaled_dot_product_attention(q_s, k, v, attn_mask=allowed)))
    x_s = x_s + block.ls_2(block.mlp(block.ln_2(x_s)))
    if not last:
        x_p = x_p + block.ls_1(_merge(attn, F.scaled_dot_product_attention(q_p, k_p, v_p, is_causal=True)))
        x_p = x_p + block.ls_2(block.mlp(block.ln_2(x_p)))
    return x_p, x_s


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
        self.shared_prefix = (cfg.shared_prefix and cfg.truncate and self.position == "end" and not cfg.csc
                              and self.tower.supports_shared_prefix())
        if self.shared_prefix:  # each prompt's end token, counted within its suffix
            self.register_buffer("suffix_pool", self.tower.pool_positions(ids) - (1 + n_ctx), persistent=False)
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

    def encode(self) -> torch.Tensor:
        """Text features of every class's prompt [C, E], through the shared prefix where it is exact."""
        if self.shared_prefix:
            prefix = torch.cat([self.token_prefix[:1], self.ctx.unsqueeze(0)], dim=1)
            suffix = self.token_suffix[:, :self.length - 1 - self.n_ctx]
            return self.tower.forward_shared(prefix, suffix, self.suffix_pool)
        return self.tower(self.prompts(), self.ids[:, :self.length])

    def text_features(self) -> torch.Tensor:
        if self.training or (torch.is_grad_enabled() and self.ctx.requires_grad):
            self._cache = None
            return self.encode()
        key = (self.ctx._version, self.ctx.data_ptr(), self.ctx.device)
        if self._cache is None or self._cache[0] != key:  # evaluation: the context is fixed, compute once
            self._cache = (key, self.encode())
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
    changes = frozenset({Part.TEXT_PROMPT, Part.HEAD})
    Config = CoOpConfig
    version = "2"  # 2: the shared-prefix text path by default

    @classmethod
    def defaults_for(cls, dataset: str, shots: int) -> dict:
        return {"epochs": coop_epochs(dataset, shots)}

    @classmethod
    def plan_work(cls, config: CoOpConfig, plan) -> None:
        if config.feature_views:
            plan.features("train", ("crop", tuple(config.crop_scale), 0), config.feature_views)
        else:
            plan.live("train", config.batch_size, config.epochs, drop_last=True)

    def fit(self, clf, ctx) -> dict:
        cfg: CoOpConfig = self.config
        precision = resolve_precision(cfg.precision, ctx.device, self.name)
        dtype = torch.float16 if precision == "fp16" else torch.float32
        head = PromptHead(clf.model, ctx.tokenizer, ctx.data.classnames, cfg, ctx.generator(10), dtype)
        head = head.to(ctx.device)
        clf.head = head
        optimizer = torch.optim.SGD([head.ctx], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        amp = precision == "amp"
        scaler = torch.amp.GradScaler("cuda") if amp and ctx.device.type == "cuda" else None
        autocast = (lambda: torch.autocast(ctx.device.type, dtype=amp_dtype(ctx.device))) if amp else nullcontext
        transform = ctx.train_transform(tuple(cfg.crop_scale))

        epoch_batches = train_feature_batches(clf, ctx, transform, cfg.batch_size, ctx.generator(11),
                                              cfg.feature_views or None)

        def step(feats, y) -> float:
            with torch.no_grad():
                feats = clf.adapt(feats)
            with autocast():
                loss = F.cross_entropy(clf.logits_from_adapted(feats), y)
            return optimizer_step(optimizer, loss, scaler)

        head.train()
        train_loss = train_epochs(cfg.epochs, epoch_batches, step,
                                  scheduler=warmup_cosine(optimizer, cfg.epochs, cfg.warmup_epochs, cfg.warmup_lr),
                                  report=(ctx.progress, self.name, 10))
        head.eval()
        head.ctx.requires_grad_(False)
        return {"trainable_params": head.ctx.numel(), "precision": precision, "epochs": cfg.epochs,
                "text_path": "shared_prefix" if head.shared_prefix else "plain",
                "n_ctx": head.n_ctx, "train_loss": train_loss}
