"""Learned tokens in an open_clip ViT image tower's token sequence (visual prompts: VPT, UPT).

Nothing of open_clip is copied or replaced: :class:`VisualPrompts` is registered as the submodule
``visual.prompts`` of the tower (so ``module_fingerprint(visual)`` — the feature cache's encoder identity —
covers the tokens and whatever computes them) and acts through forward hooks on the tower's own modules:

* layer 0's tokens join the sequence once per image forward: right after the class token
  (``position="after_cls"``) or after the last patch (``"end"``); before ``ln_pre`` (``through_ln_pre``: they
  pass through it with the patches) or at the transformer's input, after ``ln_pre``;
* before block ``i`` (1 <= i < depth) the prompt positions are overwritten with layer ``i``'s tokens (the
  outputs of the previous block at those positions are discarded: deep prompts);
* after the last block the prompt positions are dropped, so the tower pools and projects a sequence laid out
  as open_clip's (class-token pooling reads the same token as the official codes, which pool ``x[:, 0]``).

Subclasses say where the tokens come from (:meth:`VisualPrompts.layer_tokens`): learned per layer
(:class:`DeepPrompts`), or computed by another module each forward (UPT's shared prompt network).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from bench import BenchError

Position = Literal["after_cls", "end"]


def image_tower_width(visual: nn.Module) -> int:
    """The token width of an open_clip ViT image tower, or a one-line error for towers without tokens."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or not hasattr(visual, "ln_pre") or not hasattr(visual, "class_embedding"):
        raise BenchError(f"visual prompts need an open_clip ViT image tower (VisionTransformer); "
                         f"{type(visual).__name__} has no token sequence to prompt: use a ViT model such as ViT-B-16")
    return int(visual.class_embedding.shape[-1])


class VisualPrompts(nn.Module):
    """Prompt tokens [depth, P, width] placed in the image tower's sequence by hooks (see the module doc)."""

    def __init__(self, n_tokens: int, position: Position = "after_cls", through_ln_pre: bool = False):
        super().__init__()
        if position not in ("after_cls", "end"):
            raise BenchError(f"bad prompt position {position!r}: choose after_cls or end")
        self.n_tokens, self.position, self.through_ln_pre = n_tokens, position, through_ln_pre
        self._handles: list = []
        self._tokens: torch.Tensor | None = None  # this forward's tokens, set when layer 0's join
        self._batch_first = True

    @property
    def depth(self) -> int:
        """How many layers get tokens of their own (1: shallow prompts)."""
        raise NotImplementedError

    def layer_tokens(self) -> torch.Tensor:
        """[depth, P, width]: the tokens of layers 0 .. depth-1 for this forward."""
        raise NotImplementedError

    # -- placing tokens ----------------------------------------------------------------------------
    def _slots(self, length: int) -> slice:
        return slice(1, 1 + self.n_tokens) if self.position == "after_cls" else slice(length - self.n_tokens, length)

    def _insert(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, L, D] -> [N, L + P, D] with layer 0's tokens in place."""
        self._tokens = self.layer_tokens()
        tokens = self._tokens[0].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        parts = [x[:, :1], tokens, x[:, 1:]] if self.position == "after_cls" else [x, tokens]
        return torch.cat(parts, dim=1)

    def _replace(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Overwrite the prompt positions of x (the transformer's layout) with ``layer``'s tokens."""
        if self._tokens is None:  # a block called outside a prompted forward: leave it alone
            return x
        nld = x if self._batch_first else x.transpose(0, 1)
        keep = self._slots(nld.shape[1])
        tokens = self._tokens[layer].to(nld.dtype).unsqueeze(0).expand(nld.shape[0], -1, -1)
        out = torch.cat([nld[:, :keep.start], tokens, nld[:, keep.stop:]], dim=1)
        return out if self._batch_first else out.transpose(0, 1)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, L + P, D] (the transformer's output, NLD) without the prompt positions."""
        if self._tokens is None:
            return x
        keep = self._slots(x.shape[1])
        self._tokens = None
        return torch.cat([x[:, :keep.start], x[:, keep.stop:]], dim=1)

    # -- installing ----------------------------------------------------------------------------------
    def install(self, visual: nn.Module) -> "VisualPrompts":
        """Register as ``visual.prompts`` and hook into the tower; returns self."""
        image_tower_width(visual)
        if isinstance(getattr(visual, "prompts", None), VisualPrompts):
            raise BenchError("the image tower already holds visual prompts; stack one visual-prompt method only")
        transformer = visual.transformer
        blocks = transformer.resblocks
        depth = self.depth
        if depth > len(blocks):
            raise BenchError(f"{depth} prompt layers asked for, but the image tower has {len(blocks)} blocks")
        self._batch_first = getattr(transformer, "batch_first", True)
        visual.prompts = self
        first = visual.ln_pre if self.through_ln_pre else transformer
        self._handles = [first.register_forward_pre_hook(lambda m, args: (self._insert(args[0]), *args[1:]))]
        for i in range(1, depth):
            self._handles.append(blocks[i].register_forward_pre_hook(
                lambda m, args, i=i: (self._replace(args[0], i), *args[1:])))
        self._handles.append(transformer.register_forward_hook(lambda m, args, out: self._drop(out)))
        return self

    def uninstall(self, visual: nn.Module) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if getattr(visual, "prompts", None) is self:
            del visual.prompts


class DeepPrompts(VisualPrompts):
    """Independent learned tokens for each of ``depth`` layers, N(0, init_std^2) (VPT-deep)."""

    def __init__(self, depth: int, n_tokens: int, width: int, generator: torch.Generator, init_std: float = 0.02,
                 position: Position = "after_cls", through_ln_pre: bool = False):
        super().__init__(n_tokens, position, through_ln_pre)
        self.tokens = nn.Parameter(torch.randn(depth, n_tokens, width, generator=generator) * init_std)

    @property
    def depth(self) -> int:
        return self.tokens.shape[0]

    def layer_tokens(self) -> torch.Tensor:
        return self.tokens


def train_through_encoder(clf, ctx, params: list[nn.Parameter], cfg, name: str, logits=None) -> float:
    """Dassl's SGD recipe (``DasslSGDConfig``: SGD with momentum and weight decay, constant warm-up then the
    cosine, stepped per epoch; RandomResizedCrop + flip) on ``params``, with cross-entropy of
    ``logits(images)`` (default: the classifier's, through the prompted image tower) on freshly augmented
    images every step. ``cfg.precision == "amp"`` autocasts the forward (loss scaling on CUDA).
    Returns the last epoch's mean loss."""
    import torch.nn.functional as F

    from ._training import amp_dtype, optimizer_step, train_epochs, warmup_cosine

    logits = logits or clf
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    amp = cfg.precision == "amp"
    scaler = torch.amp.GradScaler("cuda") if amp and ctx.device.type == "cuda" else None
    loader = ctx.loader("train", ctx.train_transform(tuple(cfg.crop_scale)), batch_size=cfg.batch_size,
                        shuffle=True, drop_last=True, generator=ctx.generator(11))

    def step(images, labels) -> float:
        images, labels = images.to(ctx.device), labels.to(ctx.device)
        if amp:
            with torch.autocast(ctx.device.type, dtype=amp_dtype(ctx.device)):
                loss = F.cross_entropy(logits(images).float(), labels)
        else:
            loss = F.cross_entropy(logits(images), labels)
        return optimizer_step(optimizer, loss, scaler)

    was_training = clf.training
    clf.train()
    try:
        return train_epochs(cfg.epochs, lambda epoch: loader, step,
                            scheduler=warmup_cosine(optimizer, cfg.epochs, cfg.warmup_epochs, cfg.warmup_lr),
                            report=(ctx.progress, name, max(cfg.epochs // 10, 1)))
    finally:
        clf.train(was_training)
        for p in params:
            p.requires_grad_(False)
