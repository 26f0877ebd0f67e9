#!/usr/bin/env python
"""Pre-train bench's embedded ``tiny`` CLIP on synthetic (image, caption) pairs, then evaluate it.

Contrastive CLIP loss on fresh batches from the scene generator (``bench.data.synthetic``): every
step draws new scenes from a generator seeded by (seed, step), so a run is a pure function of its
arguments and reproduces on CPU. The weights are written as fp16 safetensors that open_clip loads with
``open_clip.create_model_and_transforms('tiny', pretrained='<file>')``.

    python scripts/pretrain_tiny.py                      # writes harness/assets/tiny.safetensors
    python scripts/pretrain_tiny.py --out /tmp/tiny.safetensors --steps 300
    python scripts/pretrain_tiny.py --eval-only --out harness/assets/tiny.safetensors

After training it prints zero-shot top-1 on each synthetic dataset (the harness's protocol: template
prompts, test transform) and a 16-shot linear probe on frozen features (logistic regression, C chosen
on the few-shot val split).
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "harness" / "assets"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _open_clip():
    import open_clip

    if "tiny" not in open_clip.list_models():
        open_clip.add_model_config(ASSETS / "tiny.json")
    return open_clip


def _normalise(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def train(args) -> torch.nn.Module:
    from open_clip.loss import ClipLoss

    from bench.data import synthetic

    open_clip = _open_clip()
    torch.manual_seed(args.seed)
    model = open_clip.create_model("tiny")
    tokenizer = open_clip.get_tokenizer("tiny")
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    warmup = max(1, args.steps // 20)
    start = time.time()
    for step in range(args.steps):
        lr = args.lr * (step + 1) / warmup if step < warmup else \
            args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = lr
        rng = np.random.default_rng([args.seed, step])
        scenes = synthetic.sample_scenes(rng, args.batch)
        images = _normalise(synthetic.render(scenes, rng))
        texts = tokenizer(synthetic.caption(scenes, rng))
        img_f, txt_f, scale = model(images, texts)
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % args.log_every == 0 or step == args.steps - 1:
            spent = time.time() - start
            eta = spent / (step + 1) * (args.steps - step - 1)
            print(f"step {step + 1:4d}/{args.steps}  loss {loss.item():.3f}  lr {lr:.2e}  "
                  f"scale {model.logit_scale.exp().item():5.1f}  {spent / 60:5.1f} min (eta {eta / 60:.1f})",
                  flush=True)
    print(f"trained {args.steps} steps x {args.batch} pairs in {(time.time() - start) / 60:.1f} min", flush=True)
    return model.eval()


def save(model: torch.nn.Module, out: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous().clone() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})  # one key: byte-identical files
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", flush=True)


@torch.no_grad()
def _features(model, paths: list[str], transform) -> torch.Tensor:
    from PIL import Image

    feats = []
    for i in range(0, len(paths), 256):
        batch = torch.stack([transform(Image.open(p)) for p in paths[i:i + 256]])
        feats.append(torch.nn.functional.normalize(model.encode_image(batch), dim=-1))
    return torch.cat(feats)


@torch.no_grad()
def evaluate(model, data_root: Path, shots: int = 16, probe: bool = True) -> dict[str, tuple[float, float]]:
    """Zero-shot and ``shots``-shot linear-probe top-1 (%) per synthetic dataset."""
    from bench.data import synthetic
    from bench.data.fewshot import fewshot_split
    from bench.data.splits import classnames_of, read_split_json
    from bench.data.transforms import test_transform

    open_clip = _open_clip()
    tokenizer = open_clip.get_tokenizer("tiny")
    transform = test_transform(32)
    model.eval()
    results = {}
    for name, spec in synthetic.SPECS.items():
        folder = synthetic.materialize(name, data_root)
        splits = read_split_json(folder / spec.split_file, folder / "images")
        classnames = classnames_of(splits["train"])
        prompts = [spec.template.format(c.replace("_", " ")) for c in classnames]
        text = torch.nn.functional.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
        test_x = _features(model, [d.path for d in splits["test"]], transform)
        test_y = torch.tensor([d.label for d in splits["test"]])
        zs = ((test_x @ text.T).argmax(1) == test_y).float().mean().item() * 100
        lp = float("nan")
        if probe:
            lp = _linear_probe(model, splits, shots, transform, test_x, test_y, fewshot_split)
        results[name] = (zs, lp)
        print(f"  {name:18s} classes {len(classnames):3d}  zero-shot {zs:5.1f}  linear probe {lp:5.1f}", flush=True)
    zs_mean = sum(v[0] for v in results.values()) / len(results)
    lp_mean = sum(v[1] for v in results.values()) / len(results)
    print(f"  {'average':18s}              zero-shot {zs_mean:5.1f}  linear probe {lp_mean:5.1f}", flush=True)
    return results


def _linear_probe(model, splits, shots, transform, test_x, test_y, fewshot_split) -> float:
    from sklearn.linear_model import LogisticRegression

    train, val, _ = fewshot_split(splits["train"], splits["val"], shots, seed=1)
    tr_x = _features(model, [d.path for d in train], transform).numpy()
    va_x = _features(model, [d.path for d in val], transform).numpy()
    tr_y = np.array([d.label for d in train])
    va_y = np.array([d.label for d in val])
    best = None
    for c in (0.1, 1.0, 10.0, 100.0):
        clf = LogisticRegression(C=c, max_iter=2000).fit(tr_x, tr_y)
        acc = (clf.predict(va_x) == va_y).mean()
        if best is None or acc > best[0]:
            best = (acc, clf)
    return float((best[1].predict(test_x.numpy()) == test_y.numpy()).mean() * 100)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ASSETS / "tiny.safetensors", help="weights file to write")
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--batch", type=int, default=192)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed, for reproducibility)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--data-root", type=Path, default=None,
                    help="where to materialise the synthetic datasets (default: a temporary folder)")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the weights in --out, do not train")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    if args.eval_only:
        open_clip = _open_clip()
        model, _, _ = open_clip.create_model_and_transforms("tiny", pretrained=str(args.out))
    else:
        model = train(args)
        save(model, args.out)
        model = model.half().float()  # evaluate what was saved
    if args.no_eval:
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or Path(tmp)
        print(f"evaluating on the synthetic suite (datasets in {root})", flush=True)
        evaluate(model, root, probe=not args.no_probe)


if __name__ == "__main__":
    sys.exit(main())
