"""Time CoOp's text step (prompts -> text transformer -> logits -> CE, forward + backward) three ways.

* **official**: the official structure: all C prompts through the text transformer at the full 77 tokens
  (``coop.truncate=false``);
* **truncated**: the same C prompts cut after the longest prompt's end token (``coop.shared_prefix=false``);
* **shared prefix**: bench's default: the start token and the context vectors — the same for every class
  with the class name at the end and one shared context — run once; each class's name tokens, period and
  end token run against the prefix's keys/values (``coop.shared_prefix=true``).

The model is ``ViT-B-16-quickgelu``'s text tower with random weights (no download), C class names of
realistic lengths (a mix of Caltech101, Oxford Pets, Flowers102, Stanford Cars, FGVC Aircraft, Food101 and
DTD names, cycled past 100), 16 context vectors, a batch of 32 random image features. Before timing, the
script asserts that the three variants give the same text features and context gradient (float tolerance).
Variants alternate within each repeat (so load from elsewhere hits all alike); times are medians.

Run from the repository root: ``python benchmarks/coop_step.py [--classes 100] [--repeats 3] [--threads 0]``.
Last lines: ``coop_step speedup over the official step: <official / shared>x`` and
``coop_step speedup: <truncated / shared>x``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench.methods.coop import CoOpConfig, PromptHead

CLASSNAMES = [
    "accordion", "airplanes", "anchor", "ant", "barrel", "bass", "beaver", "binocular", "bonsai", "brain",
    "brontosaurus", "buddha", "butterfly", "camera", "cannon", "car side", "ceiling fan", "cellphone", "chair",
    "chandelier", "cougar body", "cougar face", "crab", "crayfish", "crocodile head", "cup", "dalmatian",
    "dollar bill", "dolphin", "dragonfly", "electric guitar", "elephant", "emu", "euphonium", "ewer",
    "Abyssinian", "american bulldog", "american pit bull terrier", "basset hound", "Bengal", "British Shorthair",
    "english cocker spaniel", "great pyrenees", "japanese chin", "Maine Coon", "staffordshire bull terrier",
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold",
    "tiger lily", "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon",
    "colt's foot", "king protea", "spear thistle", "yellow iris", "globe-flower", "purple coneflower",
    "2012 Aston Martin Virage Coupe", "2012 BMW M3 coupe", "2007 Chevrolet Express Cargo Van",
    "2012 Hyundai Veloster Hatchback", "2009 Spyker C8 Coupe", "1993 Geo Metro Convertible",
    "2012 Mercedes-Benz Sprinter Van", "2010 Dodge Dakota Crew Cab", "707-320", "737-800",
    "A340-500", "BAe 146-300", "Cessna 172", "DHC-8-100", "Falcon 2000", "Tu-154", "apple pie",
    "baby back ribs", "beef carpaccio", "breakfast burrito", "chicken quesadilla", "eggs benedict",
    "french onion soup", "grilled cheese sandwich", "hot and sour soup", "lobster roll sandwich",
    "pad thai", "spaghetti carbonara", "banded", "blotchy", "braided", "bubbly", "crosshatched",
    "crystalline", "honeycombed", "interlaced", "polka-dotted",
]


def make_heads(model, tokenizer, names, generator_seed: int = 0) -> dict[str, PromptHead]:
    """The three variants, each with the same initial context."""
    settings = {"official": dict(truncate=False, shared_prefix=False),
                "truncated": dict(truncate=True, shared_prefix=False),
                "shared prefix": dict(truncate=True, shared_prefix=True)}
    heads = {k: PromptHead(model, tokenizer, names, CoOpConfig(n_ctx=16, **v),
                           torch.Generator().manual_seed(generator_seed)).train()
             for k, v in settings.items()}
    assert heads["shared prefix"].shared_prefix and not heads["truncated"].shared_prefix
    return heads


def step(head: PromptHead, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Forward + backward of CoOp's loss; returns the context gradient."""
    head.ctx.grad = None
    F.cross_entropy(head(feats), labels).backward()
    return head.ctx.grad


def check_same(heads: dict[str, PromptHead], feats, labels) -> None:
    ref = heads["official"]
    with torch.no_grad():
        want = ref.encode()
    g_want = step(ref, feats, labels).clone()
    for name, head in heads.items():
        with torch.no_grad():
            torch.testing.assert_close(head.encode(), want, atol=2e-5, rtol=1e-4, msg=f"{name}: text features")
        torch.testing.assert_close(step(head, feats, labels), g_want, atol=1e-6, rtol=1e-3,
                                   msg=f"{name}: context gradient")


def measure(model_name: str = "ViT-B-16-quickgelu", classes: int = 100, repeats: int = 3, warmup: int = 1,
            batch: int = 32, log=print) -> dict:
    """Median seconds per step of each variant, after checking they agree; returns times and ratios."""
    import open_clip

    from bench.models import load_model

    torch.manual_seed(0)
    if model_name == "tiny":
        model, _, tokenizer = load_model("tiny", "none")
    else:
        model = open_clip.create_model(model_name, pretrained=None)
        tokenizer = open_clip.get_tokenizer(model_name)
    model.requires_grad_(False)
    names = [CLASSNAMES[i % len(CLASSNAMES)] for i in range(classes)]
    heads = make_heads(model, tokenizer, names)
    shared = heads["shared prefix"]
    feats = torch.randn(batch, model.text_projection.shape[1])
    labels = torch.randint(0, classes, (batch,))
    check_same(heads, feats, labels)
    prefix_len = 1 + shared.n_ctx
    log(f"{model_name} text tower (random init), {classes} classes, 16 context vectors, batch {batch}: "
        f"features and context gradients agree; tokens: official 77, truncated {shared.length}, "
        f"shared prefix {prefix_len} once + {shared.length - prefix_len} per class")
    times = {k: [] for k in heads}
    for i in range(warmup + repeats):
        for name, head in heads.items():
            t0 = time.perf_counter()
            step(head, feats, labels)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds": med, "speedup": med["truncated"] / med["shared prefix"],
            "speedup_official": med["official"] / med["shared prefix"], "length": shared.length,
            "prefix": prefix_len}


def print_table(out: dict) -> None:
    print(f"{'variant':<14} {'tokens':>14} {'step s':>8} {'vs official':>12}")
    med, length, prefix = out["seconds"], out["length"], out["prefix"]
    tokens = {"official": "77", "truncated": str(length), "shared prefix": f"{prefix} + {length - prefix}"}
    for name, t in med.items():
        print(f"{name:<14} {tokens[name]:>14} {t:8.3f} {med['official'] / t:11.2f}x")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16-quickgelu", help="open_clip model name, or 'tiny'")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per variant")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default; 1 on a busy CPU)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = measure(args.model, args.classes, args.repeats)
    print_table(out)
    print(f"coop_step speedup over the official step: {out['speedup_official']:.2f}x")
    print(f"coop_step speedup: {out['speedup']:.2f}x")


if __name__ == "__main__":
    main()
