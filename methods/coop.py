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

from bench import Method, Part

from ._prompt import CoOpConfig, PromptHead, TextTower, check_text_layout, train_prompt  # noqa: F401 (re-exported)
from ._training import coop_epochs


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
        return train_prompt(self.name, cfg, clf, ctx, lambda dtype: PromptHead(
            clf.model, ctx.tokenizer, ctx.data.classnames, cfg, ctx.generator(10), dtype))
