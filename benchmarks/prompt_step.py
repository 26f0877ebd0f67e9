"""Time one training step of the prompt learners against CoOp's, on the same text tower.

* **coop**: a batch of 32 image features -> logits over C classes -> cross-entropy -> backward -> SGD step;
* **prograd**: the same batch, plus the zero-shot logits, the distillation loss and ProGrad's two gradients
  and projection (``prograd.projected_step``);
* **cocoop**: CoCoOp's batch of **1** image: the Meta-Net token, one text pass over the C classes with that
  image's context, cross-entropy, backward through context and Meta-Net, SGD step.

Each runs the plugins' own heads and update on the default text path (shared prefix). Epoch ratios follow
from the step times and the batch sizes (CoCoOp takes 32 steps where CoOp takes one). Models: ``tiny`` (the
synthetic suite's) and ViT-B/16's text tower with random weights and a small image tower (no download).
Methods alternate within each repeat (so load from elsewhere hits all alike); times are medians.

Run from the repository root: ``python benchmarks/prompt_step.py [--classes 8] [--repeats 5] [--threads 0]``.
Prints a row per model and method (ms per step, ratio to CoOp's step and epoch); last line
``prompt_step ratios: prograd <x>x coop's step, cocoop <y>x coop's step (...)``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import open_clip
import torch
import torch.nn.functional as F

from bench.methods._prompt import PromptHead
from bench.methods.cocoop import CoCoOpConfig, ConditionalPromptHead
from bench.methods.coop import CoOpConfig
from bench.methods.prograd import ProGradConfig, losses, projected_step
from bench.models import load_model

NAMES = ["accordion", "airplanes", "anchor", "ant", "barrel", "bass", "beaver", "binocular", "bonsai", "brain",
         "Abyssinian", "american bulldog", "pink primrose", "sweet pea", "2012 BMW M3 coupe", "Cessna 172",
         "apple pie", "pad thai", "banded", "blotchy"]


def models(which=("tiny", "ViT-B-16 text")):
    out = {}
    if "tiny" in which:
        tiny, _, tokenizer = load_model("tiny", "bundled")
        out["tiny"] = (tiny, tokenizer)
    if "ViT-B-16 text" in which:
        cfg = open_clip.get_model_config("ViT-B-16")
        torch.manual_seed(0)
        vision = dict(image_size=16, layers=1, width=64, head_width=32, patch_size=8)
        vit = open_clip.CLIP(cfg["embed_dim"], vision, cfg["text_cfg"]).requires_grad_(False)
        out["ViT-B-16 text"] = (vit, open_clip.get_tokenizer("ViT-B-16"))
    return out


def steppers(model, tokenizer, names):
    """method -> (batch size, a function that runs one training step)."""
    gen = torch.Generator().manual_seed(0)
    dim = model.visual.output_dim
    feats, labels = torch.randn(32, dim, generator=gen), torch.arange(32) % len(names)
    teacher = F.normalize(torch.randn(len(names), dim, generator=gen), dim=-1)
    coop = PromptHead(model, tokenizer, names, CoOpConfig(ctx_init="a photo of a"), gen).train()
    prograd = PromptHead(model, tokenizer, names, ProGradConfig(), gen, template="a photo of a {}.").train()
    cocoop = ConditionalPromptHead(model, tokenizer, names, CoCoOpConfig(), gen).train()
    sgd = lambda head: torch.optim.SGD(head.trainable(), lr=0.002, momentum=0.9, weight_decay=5e-4)  # noqa: E731
    opt = {"coop": sgd(coop), "prograd": sgd(prograd), "cocoop": sgd(cocoop)}
    scale = float(model.logit_scale.exp())

    def coop_step():
        opt["coop"].zero_grad(set_to_none=True)
        F.cross_entropy(coop(feats), labels).backward()
        opt["coop"].step()

    def prograd_step():
        zero_shot = scale * F.normalize(feats, dim=-1) @ teacher.t()
        projected_step(opt["prograd"], prograd.trainable(), *losses(prograd(feats), zero_shot, labels), 1.0)

    def cocoop_step():
        opt["cocoop"].zero_grad(set_to_none=True)
        F.cross_entropy(cocoop(feats[:1]), labels[:1]).backward()
        opt["cocoop"].step()

    return {"coop": (32, coop_step), "prograd": (32, prograd_step), "cocoop": (1, cocoop_step)}


def measure(which=("tiny", "ViT-B-16 text"), classes: int = 8, repeats: int = 5, steps: int = 5) -> dict:
    """model -> method -> (median seconds per step, batch size)."""
    names = [NAMES[i % len(NAMES)] for i in range(classes)]
    out = {}
    for label, (model, tokenizer) in models(which).items():
        runs = steppers(model, tokenizer, names)
        times = {m: [] for m in runs}
        for _, fn in runs.values():
            fn()  # warm-up
        for _ in range(repeats):
            for method, (_, fn) in runs.items():
                start = time.perf_counter()
                for _ in range(steps):
                    fn()
                times[method].append((time.perf_counter() - start) / steps)
        out[label] = {m: (statistics.median(t), runs[m][0]) for m, t in times.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = measure(classes=args.classes, repeats=args.repeats, steps=args.steps)
    for label, row in results.items():
        coop = row["coop"][0]
        for method, (seconds, batch) in row.items():
            print(f"{label:14s} {method:8s} {1000 * seconds:8.1f} ms/step  {seconds / coop:5.2f}x coop's step  "
                  f"{seconds * 32 / batch / coop:5.1f}x coop's epoch  (batch {batch})")
    vit = results["ViT-B-16 text"]
    print(f"prompt_step ratios: prograd {vit['prograd'][0] / vit['coop'][0]:.2f}x coop's step, cocoop "
          f"{vit['cocoop'][0] / vit['coop'][0]:.2f}x coop's step ({args.classes} classes, ViT-B-16 text tower)")


if __name__ == "__main__":
    main()
