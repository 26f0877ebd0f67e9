"""CoOp's prompt learner and text path, shared by the methods that learn a text prompt (coop, prograd,
cocoop): the context config, the open_clip text tower run from token embeddings (plain or through a shared
prefix), the prompt head, and the training loop they share. What each piece reproduces of the official code
is in the docstrings of ``coop.py``, ``prograd.py`` and ``cocoop.py``.

Not a plugin (no entry point); method modules import it instead of each other.
"""
from __future__ import annotations

import copy
import dataclasses
from contextlib import nullcontext
from typing import Annotated, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench import BenchError
from bench.plugin import AtLeastOne, NonNegative, Search

from ._training import (DasslSGDConfig, amp_dtype, optimizer_step, resolve_precision, train_epochs,
                        train_feature_batches, warmup_cosine)

POSITIONS = ("end", "middle", "front")


@dataclasses.dataclass
class CoOpConfig(DasslSGDConfig):
    n_ctx: Annotated[int, AtLeastOne, Search(choices=(4, 8, 16))] = 16  # context vectors (ignored when ctx_init gives words); the paper's lengths searched
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
            f"learned text prompts (coop, prograd, cocoop) need open_clip's CLIP text layout, but "
            f"{type(model).__name__} keeps its text tower under model.text (CustomTextCLIP: SigLIP, EVA, HF text); "
            "run them with a CLIP model such as ViT-B-16")


def token_count(tokenizer, text: str) -> int:
    """BPE tokens of ``text`` (between SOT and EOT)."""
    ids = tokenizer([text])[0]
    return int(ids.argmax()) - 1


def template_context(tokenizer, embed: nn.Embedding, template: str, n_ctx: int, device) -> tuple:
    """ProGrad's context from a hand-written template: ``(n_ctx, vectors, prefix_text, tail)``.

    The words before ``{}`` fill the last of the ``n_ctx`` vectors, the rest are zero. As the official
    code, the words are counted by spaces and that many BPE embeddings are taken; where a word is two
    tokens (``"pet,"``) the last token of the words falls outside the context and stays a fixed token
    before the class name, so the initial prompt is the template itself either way."""
    head, _, tail = template.partition("{}")
    words = head.replace("_", " ").strip()
    k = len(words.split(" ")) if words else 0
    if k > n_ctx:
        raise BenchError(f"the template {template!r} has {k} words before the class name but n_ctx is {n_ctx}; "
                         "set n_ctx to at least the number of words")
    width = embed.weight.shape[1]
    vectors = torch.zeros(n_ctx, width, device=device)
    if k:
        vectors[n_ctx - k:] = embed(tokenizer([words]).to(device))[0, 1:1 + k].float()
    prefix_text = " ".join(["X"] * (n_ctx - k) + ([words] if words else []))
    return n_ctx, vectors, prefix_text, tail.rstrip()


class PromptHead(nn.Module):
    """CoOp's prompt learner + text encoder as a classifier head: features -> logits over classes."""

    def __init__(self, model: nn.Module, tokenizer, classnames: list[str], cfg: CoOpConfig,
                 generator: torch.Generator, dtype: torch.dtype = torch.float32, template: str = ""):
        """``template`` (e.g. ``"a texture of {}."``): ProGrad's initialisation instead of CoOp's -- the last
        vectors of the ``n_ctx`` are the embeddings of the words before ``{}`` (as many as there are
        space-separated words), the others zero, and the text after ``{}`` follows the class name."""
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
        tail = "."
        with torch.no_grad():
            init = cfg.ctx_init.replace("_", " ").strip()
            if template:
                n_ctx, vectors, prefix_text, tail = template_context(tokenizer, embed, template, cfg.n_ctx, device)
                if cfg.csc:
                    vectors = vectors.unsqueeze(0).repeat(len(names), 1, 1)
            elif init:
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
            ids = tokenizer([f"{prefix_text} {name}{tail}" for name in names]).to(device)
            tokens = embed(ids).to(dtype)
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(vectors.to(device=device, dtype=dtype))
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("token_prefix", tokens[:, :1].clone())
        self.register_buffer("token_suffix", tokens[:, 1 + n_ctx:].clone())
        self.name_lens = [token_count(tokenizer, name) for name in names]
        self.length = ids.shape[1]
        self._rebuild = (model, tokenizer, cfg, dtype, template)  # a tuple: not registered as a submodule
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

    def prompts(self, ctx: torch.Tensor | None = None, rows: slice = slice(None)) -> torch.Tensor:
        """The assembled prompt embeddings [C, L, D] (L: the truncated length) of the classes ``rows``,
        with the context ``ctx`` (default: the learned one)."""
        ctx = self.ctx if ctx is None else ctx
        if self.position != "end" and rows != slice(None):
            return self.prompts(ctx)[rows]
        prefix, suffix = self.token_prefix[rows], self.token_suffix[rows, :self.length - 1 - self.n_ctx]
        ctx = ctx[rows] if ctx.dim() == 3 else ctx.unsqueeze(0).expand(prefix.shape[0], -1, -1)
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

    def encode(self, ctx: torch.Tensor | None = None, rows: slice = slice(None)) -> torch.Tensor:
        """Text features [C, E] of the prompts of the classes ``rows`` with the context ``ctx`` (default:
        the learned one), through the shared prefix where it is exact."""
        ctx = self.ctx if ctx is None else ctx
        if self.shared_prefix:
            prefix = torch.cat([self.token_prefix[:1], ctx.to(self.token_prefix.dtype).unsqueeze(0)], dim=1)
            suffix = self.token_suffix[rows, :self.length - 1 - self.n_ctx]
            return self.tower.forward_shared(prefix, suffix, self.suffix_pool[rows])
        return self.tower(self.prompts(ctx, rows), self.ids[rows, :self.length])

    def trainable(self) -> list[nn.Parameter]:
        """What the optimizer trains."""
        return [self.ctx]

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
        model, tokenizer, cfg, dtype, template = self._rebuild
        head = type(self)(model, tokenizer, classnames, cfg, torch.Generator(), dtype, template)
        with torch.no_grad():
            for mine, theirs in zip(head.trainable(), self.trainable()):
                mine.copy_(theirs)
        return head.to(self.ctx.device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        text = F.normalize(self.text_features(), dim=-1)
        image = F.normalize(features.to(text.dtype), dim=-1)
        return (self.logit_scale * image @ text.t()).float()




def train_prompt(name: str, cfg: CoOpConfig, clf, ctx, make_head: Callable[[torch.dtype], PromptHead],
                 objective: Callable | None = None, update: Callable | None = None) -> dict:
    """Install the head ``make_head(dtype)`` builds and train its parameters as CoOp does: Dassl's SGD with
    warm-up + cosine per epoch, features of the frozen encoder (through any installed adapter), the last
    epoch kept. ``objective(logits, features, labels)`` gives the loss (default: cross-entropy) and
    ``update(optimizer, loss, scaler)`` back-propagates it and steps (default: :func:`optimizer_step`).
    Returns the fit's row fields."""
    precision = resolve_precision(cfg.precision, ctx.device, name)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    head = make_head(dtype).to(ctx.device)
    clf.head = head
    params = head.trainable()
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    amp = precision == "amp"
    scaler = torch.amp.GradScaler("cuda") if amp and ctx.device.type == "cuda" else None
    autocast = (lambda: torch.autocast(ctx.device.type, dtype=amp_dtype(ctx.device))) if amp else nullcontext
    transform = ctx.train_transform(tuple(cfg.crop_scale))
    epoch_batches = train_feature_batches(clf, ctx, transform, cfg.batch_size, ctx.generator(11),
                                          cfg.feature_views or None)
    objective = objective or (lambda logits, feats, y: F.cross_entropy(logits, y))
    update = update or optimizer_step

    def step(feats, y) -> float:
        with torch.no_grad():
            feats = clf.adapt(feats)
        with autocast():
            loss = objective(clf.logits_from_adapted(feats), feats, y)
        return update(optimizer, loss, scaler)

    head.train()
    train_loss = train_epochs(cfg.epochs, epoch_batches, step,
                              scheduler=warmup_cosine(optimizer, cfg.epochs, cfg.warmup_epochs, cfg.warmup_lr),
                              val_report=ctx.report_epoch, report=(ctx.progress, name, 10))
    head.eval()
    for p in params:
        p.requires_grad_(False)
    return {"trainable_params": sum(p.numel() for p in params), "precision": precision, "epochs": cfg.epochs,
            "text_path": "shared_prefix" if head.shared_prefix else "plain", "n_ctx": head.n_ctx,
            "train_loss": train_loss}
