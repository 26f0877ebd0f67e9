"""Time one training step of the image-token methods beside CoOp's, on the same images and classes.

* **coop**: CoOp's step as bench runs it on live images (``feature_views=0``): the frozen image tower under
  ``no_grad``, then the prompt head (shared-prefix text path) forward + backward of the cross-entropy;
* **vpt_deep**: the prompted image tower forward + backward (4 tokens per block), zero-shot text head;
* **upt**: the prompted image tower (UPT's shallow tokens) and UPT's text head, forward + backward through
  the prompt network, which runs twice (visual and text halves).

Each step includes the optimizer's zero_grad and the SGD update. Methods alternate within each repeat (so load
from elsewhere hits all alike); times are medians over the repeats of the mean step over ``--steps`` steps.

Run from the repository root: ``python benchmarks/token_step.py [--model tiny] [--classes 10] [--batch 32]``;
``--model ViT-B-16`` takes a random-init ViT-B/16 at 224 px (no download). Last lines:
``token_step vpt_deep / coop: <ratio>x`` and ``token_step upt / coop: <ratio>x``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench.classifier import ClipClassifier, ZeroShotHead
from bench.methods._visual_prompts import DeepPrompts
from bench.methods.coop import CoOpConfig, PromptHead
from bench.methods.upt import UnifiedHead, UnifiedPrompt, UnifiedVisualPrompts
from bench.models import load_model


def build(model_name: str, names: list[str]):
    """Three classifiers over one frozen model; each step function trains its own parameters."""
    if model_name == "tiny":
        model, _, tokenizer = load_model("tiny", "bundled")
        size = 32
    else:
        import open_clip

        model, tokenizer, size = open_clip.create_model(model_name, pretrained=None), open_clip.get_tokenizer(model_name), 224
    model.eval().requires_grad_(False)
    visual = model.visual
    width, text_width = visual.class_embedding.shape[0], model.token_embedding.weight.shape[1]
    scale = float(model.logit_scale.exp())
    with torch.no_grad():
        weights = model.encode_text(tokenizer([f"a photo of a {n}." for n in names]))

    coop = PromptHead(model, tokenizer, names, CoOpConfig(n_ctx=16), torch.Generator().manual_seed(0)).train()
    vpt = DeepPrompts(len(visual.transformer.resblocks), 4, width, torch.Generator().manual_seed(0))
    unified = UnifiedPrompt(4, 4, text_width, width, torch.Generator().manual_seed(0))
    upt_text = PromptHead(model, tokenizer, names, CoOpConfig(n_ctx=4, init_std=0.0), torch.Generator())
    upt_text.ctx.requires_grad_(False)
    upt_head = UnifiedHead(upt_text, unified, scale).train()
    unified_tokens = UnifiedVisualPrompts(unified, 4)

    def trainer(params, forward, install=None):
        opt = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)

        def step(images, labels):
            if install is not None:
                install.install(visual)
            try:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(forward(images), labels).backward()
                opt.step()
            finally:
                if install is not None:
                    install.uninstall(visual)
        return step

    def coop_forward(images):
        with torch.no_grad():
            feats = model.encode_image(images)
        return coop(feats)

    zs = ClipClassifier(model, ZeroShotHead(weights, scale))
    upt_clf = ClipClassifier(model, upt_head)
    steps = {"coop": trainer([coop.ctx], coop_forward),
             "vpt_deep": trainer([vpt.tokens], zs, vpt),
             "upt": trainer(list(unified.parameters()), upt_clf, unified_tokens)}
    return steps, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [f"class {i}" for i in range(args.classes)]
    steps, size = build(args.model, names)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, size, size, generator=gen)
    labels = torch.randint(0, args.classes, (args.batch,), generator=gen)
    for step in steps.values():  # warm-up
        step(images, labels)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(images, labels)
            times[name].append((time.perf_counter() - start) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {args.model}, {args.classes} classes, batch {args.batch}, {torch.get_num_threads()} threads")
    for name, t in med.items():
        print(f"  {name:9s} {1000 * t:8.1f} ms/step")
    print(f"token_step vpt_deep / coop: {med['vpt_deep'] / med['coop']:.2f}x")
    print(f"token_step upt / coop: {med['upt'] / med['coop']:.2f}x")


if __name__ == "__main__":
    main()
