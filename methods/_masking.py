"""Binary weight masks on an open_clip image encoder: selection, forward, GDR, save/load/bake.

The helpers of the ``mask`` plugin (R-AMT). Nothing here copies or rewrites open_clip modules: the
masked forward swaps the selected weights for ``W * 1[score > threshold]`` through
``torch.func.functional_call``, so any open_clip ViT (or other tower built from ``nn.MultiheadAttention``)
works, and the module itself stays the unmasked teacher.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

FORMAT = "bench-mask-v1"
_BLOCK = re.compile(r"(?:resblocks|blocks|layers?)\.(\d+)\.")
LAYERS = re.compile(r"^(|all|-?\d+(--?\d+)?(,-?\d+(--?\d+)?)*)$", re.IGNORECASE)  # what parse_layers reads


# -- which tensors are masked ------------------------------------------------------------------
def parse_layers(spec: str, n_blocks: int) -> set[int]:
    """``"all"`` / ``""`` -> every block; ``"0-3,10,-1"`` -> those blocks (negative counts from the end, so
    ``"-4--1"`` is the last four). A block outside ``-n_blocks .. n_blocks - 1`` is a ValueError."""
    if spec.strip().lower() in ("", "all"):
        return set(range(n_blocks))
    out: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        ends = [int(i) for i in re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", part).groups() if i is not None]
        if any(not -n_blocks <= i < n_blocks for i in ends):
            raise ValueError(f"layers={spec}: the image encoder has {n_blocks} blocks, numbered 0-{n_blocks - 1} "
                             f"(or -{n_blocks} to -1 from the end)")
        lo, hi = ends[0] % n_blocks, ends[-1] % n_blocks
        out.update(range(lo, hi + 1))
    return out


def _block_of(name: str) -> int | None:
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def select_masked(visual: nn.Module, mlp: bool = False, layers: str = "all",
                  patch_embed: bool = True) -> list[str]:
    """Names (relative to ``visual``) of the weights R-AMT masks, in module order.

    - the patch embedding: ``conv1.weight`` (open_clip ViT) or the first ``Conv2d`` of the tower;
    - every attention block's fused input projection (``in_proj_weight``, or ``q/k/v_proj_weight``)
      and ``out_proj.weight``;
    - with ``mlp``: the weights of the ``Linear`` layers inside each block's ``mlp``.
    Biases, norms, embeddings and the final projection are never masked.
    """
    names: list[str] = []
    attn = [(n, m) for n, m in visual.named_modules()
            if isinstance(m, nn.MultiheadAttention)
            or (isinstance(getattr(m, "in_proj_weight", None), nn.Parameter)
                and isinstance(getattr(m, "out_proj", None), nn.Linear))]
    if not attn:
        raise ValueError(f"{type(visual).__name__} has no attention blocks: mask tuning needs a ViT image encoder")
    blocks = sorted({b for n, _ in attn if (b := _block_of(n + ".")) is not None})
    chosen = parse_layers(layers, len(blocks)) if blocks else set()
    keep_block = {blocks[i] for i in chosen}

    def in_chosen(name: str) -> bool:
        b = _block_of(name + ".")
        return b is None or b in keep_block

    if patch_embed:
        conv = next(((n, m) for n, m in visual.named_modules() if n == "conv1" and isinstance(m, nn.Conv2d)),
                    next(((n, m) for n, m in visual.named_modules() if isinstance(m, nn.Conv2d)), None))
        if conv is not None:
            names.append(f"{conv[0]}.weight")
    for n, m in attn:
        if not in_chosen(n):
            continue
        if getattr(m, "in_proj_weight", None) is not None:
            names.append(f"{n}.in_proj_weight")
        else:
            names += [f"{n}.{p}_proj_weight" for p in ("q", "k", "v")]
        names.append(f"{n}.out_proj.weight")
    if mlp:
        for n, m in visual.named_modules():
            if isinstance(m, nn.Linear) and ".mlp." in f".{n}" and in_chosen(n):
                names.append(f"{n}.weight")
    params = dict(visual.named_parameters())
    order = {n: i for i, n in enumerate(params)}
    return sorted(dict.fromkeys(names), key=order.__getitem__)


# -- the masked forward ------------------------------------------------------------------------
class _MaskedWeight(torch.autograd.Function):
    """``W * 1[score > t]`` with a straight-through gradient: d/dscore = (dL/dW_eff) * W.

    Saves only ``W`` (the frozen weight itself, no copy) for the backward pass.
    """

    @staticmethod
    def forward(weight, score, threshold):
        return torch.where(score > threshold, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return None, grad * weight, None


def masked_weight(weight: torch.Tensor, score: torch.Tensor, threshold: float) -> torch.Tensor:
    return _MaskedWeight.apply(weight, score, threshold)


def masked_forward(visual: nn.Module, scores: Mapping[str, torch.Tensor], threshold: float,
                   images: torch.Tensor) -> torch.Tensor:
    """Image features of ``visual`` with every scored weight replaced by its masked version."""
    params = dict(visual.named_parameters())
    swapped = {n: masked_weight(params[n], s, threshold) for n, s in scores.items()}
    return functional_call(visual, swapped, (images,))


# -- gradient dropout (GDR) --------------------------------------------------------------------
def gdr_gradient(g: torch.Tensor, g_kl: torch.Tensor, lam: float, u: torch.Tensor) -> torch.Tensor:
    """R-AMT's gradient dropout of the official code (rmt.md §6).

    Keep probability P = 1/2 (1 + sign(g) (g + g_kl) / (|g| + |g_kl| + 1e-8)): 1 where the task
    gradient ``g`` and the KL gradient agree in sign, |g| / (|g| + |g_kl|) where they conflict.
    Returns ((1 - lam) + lam * 1[P > u]) * g; ``g_kl`` itself is never applied.
    """
    p = 0.5 * (1 + torch.sign(g) * (g + g_kl) / (g.abs() + g_kl.abs() + 1e-8))
    return g * ((1 - lam) + lam * (p > u).to(g.dtype))


# -- binary masks: count, save, load, bake ---------------------------------------------------------
def binary_masks(scores: Mapping[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """The one rule used everywhere: a weight is kept if and only if its score > threshold."""
    return {n: (s.detach() > threshold) for n, s in scores.items()}


def sparsity(masks: Mapping[str, torch.Tensor], visual: nn.Module | None = None) -> tuple[float, float | None]:
    """(% of masked-set weights switched off, % of all ``visual`` parameters switched off)."""
    off = sum(int((~m).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    enc = None
    if visual is not None:
        enc = 100.0 * off / sum(p.numel() for p in visual.parameters())
    return 100.0 * off / max(total, 1), enc


def save_masks(masks: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write boolean masks bit-packed (``np.packbits``, 1 bit per weight) into a safetensors file."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    packed = {n: np.packbits(m.detach().cpu().numpy().astype(bool).ravel()) for n, m in masks.items()}
    shapes = {n: list(m.shape) for n, m in masks.items()}
    save_file(packed, str(path), metadata={"format": FORMAT, "shapes": json.dumps(shapes)})
    return path


def load_masks(path: str | Path) -> dict[str, torch.Tensor]:
    """Read masks written by :func:`save_masks`: name -> bool tensor (True = weight kept)."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a bench mask file (format {meta.get('format')!r})")
        shapes = json.loads(meta["shapes"])
        for name in f.keys():
            shape = shapes[name]
            bits = np.unpackbits(f.get_tensor(name), count=int(np.prod(shape, dtype=np.int64)))
            out[name] = torch.from_numpy(bits.astype(bool).reshape(shape))
    return out


def _visual_of(model: nn.Module) -> nn.Module:
    model = getattr(model, "model", model)  # a ClipClassifier
    return getattr(model, "visual", model)  # an open_clip CLIP


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Bake masks into the image encoder in place: W <- W * M (names relative to the image tower).

    ``model`` may be the image tower, an open_clip CLIP model or a bench ``ClipClassifier``.
    """
    visual = _visual_of(model)
    params = dict(visual.named_parameters())
    missing = [n for n in masks if n not in params]
    if missing:
        raise KeyError(f"masks name weights this encoder does not have: {missing[:3]}")
    for n, m in masks.items():
        if tuple(m.shape) != tuple(params[n].shape):
            raise ValueError(f"mask {n} has shape {tuple(m.shape)}, weight has {tuple(params[n].shape)}")
        params[n].mul_(m.to(device=params[n].device, dtype=params[n].dtype))
    return model


def count(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors)
