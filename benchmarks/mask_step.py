"""Time one training step of the ``mask`` plugin (R-AMT) against the official code's step structure.

The reference is a straightforward re-implementation of the official step: the teacher (a separate,
unfrozen copy of the image encoder) runs WITH autograd, the KL loss is back-propagated through student
and teacher, its score gradients are saved, then the CE(+reg) loss is back-propagated. bench's step runs
the teacher under ``no_grad`` and takes both gradients from one student forward with ``autograd.grad``.
Both use the same masked forward and GDR rule, so for the same seed they must produce identical mask
updates; the script asserts that (with a step size large enough to flip masks).

Models: ``tiny`` (batch 32) and a randomly initialised ``ViT-B-16-quickgelu`` at 224 px (batch 8), both
timed in this run: warm-up, then alternating timed repeats, median. Last line:
``mask_step speedup: <ratio>x`` (the smaller ratio). Run from the repository root:
``python benchmarks/mask_step.py [--threads 1] [--repeats 3]`` (use ``--threads 1`` when other jobs load the
CPU: two threads fighting for one core are several times slower).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from bench.classifier import ZeroShotHead
from bench.methods._masking import gdr_gradient, masked_forward, select_masked
from bench.methods.mask import rmt_step, soft_target_ce, task_loss

THRESHOLD, REG, LAM = 5e-3, 1e-4, 1.0


def official_step(visual, teacher, head, scores, opt, images, labels, generator):
    """The official step's structure: teacher with autograd, KL backward through both, then CE backward."""
    params = list(scores.values())
    logits = head(masked_forward(visual, scores, THRESHOLD, images))
    teacher_logits = head(teacher(images))  # not detached; the teacher's weights require grad and, as in
    # the official code (its optimizer holds only the masks), their .grad accumulates across steps
    loss = task_loss(logits, labels, scores, REG)
    kl = soft_target_ce(logits, teacher_logits, 1.0)
    opt.zero_grad()
    kl.backward(retain_graph=True)
    g_kl = [p.grad.clone() for p in params]
    opt.zero_grad()
    loss.backward()
    for p, gk in zip(params, g_kl):
        u = torch.rand(p.grad.shape, generator=generator, device=p.grad.device, dtype=p.grad.dtype)
        p.grad = gdr_gradient(p.grad, gk, LAM, u)
    opt.step()
    return float(loss.detach())


def setup(visual, lr):
    params = dict(visual.named_parameters())
    scores = {n: torch.full_like(params[n], 1e-2, requires_grad=True) for n in select_masked(visual)}
    return scores, torch.optim.Adam(scores.values(), lr=lr)


def bench_model(label, visual, embed_dim, image_size, batch, repeats, warmup, exact_check):
    torch.manual_seed(0)
    visual.train().requires_grad_(False)
    head = ZeroShotHead(torch.randn(10, embed_dim), 100.0)
    teacher = copy.deepcopy(visual).requires_grad_(True)
    images = torch.randn(batch, 3, image_size, image_size)
    labels = torch.randint(0, 10, (batch,))

    # identical mask updates for the same seed, on a step size that flips masks: bit-identical with the
    # teacher in the same (train) mode as the reference; with bench's default eval-mode teacher (fused
    # attention, logits equal to ~1e-6) at most a few GDR coin flips may land differently.
    for teacher_eval in ((False, True) if exact_check else (True,)):
        (s_ref, o_ref), (s_new, o_new) = setup(visual, 6e-3), setup(visual, 6e-3)
        official_step(visual, teacher, head, s_ref, o_ref, images, labels, torch.Generator().manual_seed(7))
        rmt_step(visual, head, s_new, o_new, images, labels, threshold=THRESHOLD, reg_weight=REG, gdr=True,
                 lam=LAM, generator=torch.Generator().manual_seed(7), teacher_eval=teacher_eval)
        flipped = sum(int((s <= THRESHOLD).sum()) for s in s_new.values())
        differ = sum(int(((a > THRESHOLD) != (b > THRESHOLD)).sum()) for a, b in zip(s_ref.values(), s_new.values()))
        assert flipped > 0, "the check step flipped no mask"
        if teacher_eval:
            assert differ <= 1e-5 * sum(s.numel() for s in s_new.values()), f"{differ} mask updates differ"
        else:
            assert differ == 0 and all(torch.equal(s_ref[n], s_new[n]) for n in s_ref), "mask updates differ"
    print(f"{label}: same mask updates as the reference ({flipped:,} masks flipped in the check step, "
          f"{differ} land differently with the eval-mode teacher"
          f"{'; bit-identical with a train-mode teacher' if exact_check else ''})", flush=True)

    (s_ref, o_ref), (s_new, o_new) = setup(visual, 8e-5), setup(visual, 8e-5)
    g_ref, g_new = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    times = {"official": [], "bench": []}
    for i in range(warmup + repeats):  # alternate, so that load from elsewhere hits both alike
        t0 = time.perf_counter()
        official_step(visual, teacher, head, s_ref, o_ref, images, labels, g_ref)
        t1 = time.perf_counter()
        rmt_step(visual, head, s_new, o_new, images, labels, threshold=THRESHOLD, reg_weight=REG, gdr=True,
                 lam=LAM, generator=g_new)
        t2 = time.perf_counter()
        if i >= warmup:
            times["official"].append(t1 - t0)
            times["bench"].append(t2 - t1)
    ref, new = statistics.median(times["official"]), statistics.median(times["bench"])
    n_scores = sum(s.numel() for s in s_new.values())
    print(f"{label:<28} batch {batch:>2}  masks {n_scores:>11,}  "
          f"official {ref * 1e3:9.1f} ms  bench {new * 1e3:9.1f} ms  speedup {ref / new:.2f}x", flush=True)
    return ref / new


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default; 1 on a busy CPU)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps on ViT-B-16 (tiny: 2x + 1)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import open_clip

    from bench.models import load_model

    tiny, _, _ = load_model("tiny", "none")
    ratios = [bench_model("tiny (random init)", tiny.visual, tiny.visual.output_dim, 32, 32, 2 * args.repeats + 1, 2, True)]
    del tiny
    vit = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    ratios.append(bench_model("ViT-B-16-quickgelu (random)", vit.visual, vit.visual.output_dim, 224, 8,
                              args.repeats, 0, False))  # the check step warmed it up
    print(f"mask_step speedup: {min(ratios):.2f}x")


if __name__ == "__main__":
    main()
