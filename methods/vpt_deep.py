"""VPT-deep for CLIP: learned prompt tokens in every layer of the frozen image encoder, zero-shot text head.

Two official variants exist; a row names which one it is (reference: more_methods.md §2):

* ``vpt_deep`` — the UPT release's ``trainers/vpt_deep.py`` (``VPT_deep``) with ``clip/model.py``'s
  ``forward_prompt_deep`` (read in pedramyamini2023/UPT at 3d1640f, the fork of yuhangzang/UPT that runs):
  4 tokens per layer for all 12 layers of ViT-B/16 (here: every block of the tower), N(0, 0.02²); layer 0's
  join the sequence right after the class token, after ``ln_pre``; before every later block the prompt
  positions are replaced by that layer's tokens. The text side is frozen: CLIP's zero-shot classifier with
  CoOp's per-dataset template (the dataset's template in bench, which is CoOp's), cross-entropy only.
  Config ``configs/trainers/VPT_deep/vit_b16_ep10.yaml``: SGD lr 0.002, batch 32, 10 epochs, one constant
  warm-up epoch at 1e-5 then the cosine, RandomResizedCrop + flip — the only VPT-deep config it ships, so
  10 epochs at every shot count.
* ``vpt_deep_maple`` — MaPLe's ``trainers/vpt.py`` (``VPT``) with its ``clip/model.py``
  (muzairkhattak/multimodal-prompt-learning at 904dbd7): 8 tokens appended after the patches *before*
  ``ln_pre``, replaced in blocks 1..depth-1 (depth 12: every block), the fixed text prompt
  ``"a photo of a {}."``; ``vit_b16_c2_ep5_batch4_4.yaml``: batch 4, lr 0.0025, 5 epochs.

Departures from the official code, documented choices:

* Precision: fp32 (``precision=amp`` autocasts the forward); both releases train CLIP in fp16
  (``PREC: fp16``; MaPLe casts its tokens with ``.half()``).
* The prompt positions are dropped after the last block, so the tower pools the sequence open_clip laid out;
  with class-token pooling (CLIP's ViTs) that is the official ``ln_post(x[:, 0])``.
* The tokens are stored [layer, token, width]; the UPT release keeps one ``(4 * 12, width)`` tensor read as
  ``reshape(4, 12, width)[:, layer]`` — a re-indexing of i.i.d. initial values, the same computation.
* Tokens live in ``visual.prompts`` and act through forward hooks on open_clip's modules
  (:mod:`bench.methods._visual_prompts`): no encoder code is copied.

Stacks: ``vpt_deep+mask`` learns and bakes the masks first (reused from ``mask``'s stage), then trains the
tokens on the masked encoder. Base-to-new: the tokens are class-agnostic and the head is the zero-shot text
head, rebuilt for the new class names.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, Optional

from bench import Method, Part
from bench.classifier import ZeroShotHead
from bench.plugin import AtLeastOne, NonNegative

from ._training import DasslSGDConfig
from ._visual_prompts import DeepPrompts, image_tower_width, train_through_encoder


@dataclasses.dataclass
class VPTDeepConfig(DasslSGDConfig):
    epochs: Annotated[int, AtLeastOne] = 10
    n_tokens: Annotated[int, AtLeastOne] = 4  # prompt tokens per layer
    depth: Optional[Annotated[int, AtLeastOne]] = None  # layers with tokens of their own; None: every block
    position: Literal["after_cls", "end"] = "after_cls"  # where the tokens sit in the sequence
    through_ln_pre: bool = False  # layer 0's tokens join before ln_pre (MaPLe) rather than after it (UPT release)
    text_template: str = ""  # "": the dataset's template(s); else a fixed prompt such as "a photo of a {}."
    init_std: Annotated[float, NonNegative] = 0.02
    precision: Literal["fp32", "amp"] = "fp32"

    def __post_init__(self):
        if self.text_template and self.text_template.count("{}") != 1:
            raise ValueError(f"text_template={self.text_template!r} must hold '{{}}' (the class name) exactly once")


class VPTDeep(Method):
    name = "vpt_deep"
    description = ("VPT-deep: learned prompt tokens in every layer of the frozen image encoder, zero-shot text "
                   "head (the UPT release's variant; vpt_deep_maple: MaPLe's)")
    trains = "4 tokens per image-encoder layer after the class token, SGD with warm-up + cosine, last epoch kept"
    changes = frozenset({Part.IMAGE_TOKENS})
    Config = VPTDeepConfig
    version = "1"
    variants = {"vpt_deep_maple": {
        "n_tokens": 8, "position": "end", "through_ln_pre": True, "text_template": "a photo of a {}.",
        "batch_size": 4, "lr": 0.0025, "epochs": 5,
        "description": "VPT-deep as MaPLe's release runs it (8 tokens after the patches, before ln_pre; "
                       "fixed prompt 'a photo of a {}.')"}}

    def fit(self, clf, ctx) -> dict:
        cfg: VPTDeepConfig = self.config
        visual = clf.model.visual
        width = image_tower_width(visual)
        depth = cfg.depth or len(visual.transformer.resblocks)
        prompts = DeepPrompts(depth, cfg.n_tokens, width, ctx.generator(10), cfg.init_std, cfg.position,
                              cfg.through_ln_pre).to(ctx.device).install(visual)
        if cfg.text_template:
            templates = (cfg.text_template,)
            clf.head = ZeroShotHead(ctx.text_weights(templates=templates), clf.logit_scale, templates).to(ctx.device)
        loss = train_through_encoder(clf, ctx, [prompts.tokens], cfg, self.name)
        return {"trainable_params": prompts.tokens.numel(), "epochs": cfg.epochs, "depth": depth,
                "train_loss": loss}
