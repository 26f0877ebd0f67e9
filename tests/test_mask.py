"""The mask plugin (R-AMT): GDR rule, masked forward, training, save/load and baking."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from bench.methods._masking import (apply_masks, binary_masks, gdr_gradient, load_masks, masked_forward,
                                    save_masks, select_masked, sparsity)
from bench.methods.mask import MaskTuning, readme_lambda, rmt_step


@pytest.fixture(scope="module")
def ctx(fixture_root):
    from bench.spec import TrialSpec
    from bench.trial import build_context, seed_everything

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CI machines are small and shared: one thread is faster than two fighting
    spec = TrialSpec(run="t", suite="t", dataset="fixture", shots=4, seed=1, stack="mask", model="tiny",
                     pretrained="none", data_root=str(fixture_root))
    seed_everything(1)
    yield build_context(spec)
    torch.set_num_threads(threads)


def fresh(ctx):
    """A copy of the trial context with its own (unmasked) classifier."""
    import dataclasses

    return dataclasses.replace(ctx, clf=copy.deepcopy(ctx.clf), _features={})


def batch(ctx, n=8):
    images, labels = next(iter(ctx.loader("train", batch_size=n)))
    return images, labels


def new_scores(visual, value=1e-2, **kw):
    params = dict(visual.named_parameters())
    return {n: torch.full_like(params[n], value, requires_grad=True) for n in select_masked(visual, **kw)}


# -- GDR -------------------------------------------------------------------------------------------
def test_gdr_agreeing_signs_keep():
    g, g_kl = torch.tensor([0.7, -0.4]), torch.tensor([0.3, -0.1])
    out = gdr_gradient(g, g_kl, 1.0, torch.tensor([0.999, 0.999]))
    assert torch.equal(out, g)


def test_gdr_conflicting_signs_hand_computed():
    # the figure's example: g = 0.2, g_kl = -0.6 -> P = 0.2 / 0.8 = 0.25 (the code's rule)
    g, g_kl = torch.tensor([0.2, 0.2, 0.2]), torch.tensor([-0.6, -0.6, -0.6])
    u = torch.tensor([0.2, 0.3, 0.9])
    assert torch.allclose(gdr_gradient(g, g_kl, 1.0, u), torch.tensor([0.2, 0.0, 0.0]))
    assert torch.allclose(gdr_gradient(g, g_kl, 0.4, u), torch.tensor([0.2, 0.12, 0.12]))


def test_gdr_conflict_keep_rate_is_g_share():
    n = 200_000
    g, g_kl = torch.full((n,), -0.3), torch.full((n,), 0.1)  # P = 0.3 / 0.4 = 0.75
    u = torch.rand(n, generator=torch.Generator().manual_seed(0))
    kept = (gdr_gradient(g, g_kl, 1.0, u) != 0).float().mean()
    assert abs(float(kept) - 0.75) < 0.005


def test_gdr_lambda_zero_is_plain_training(ctx):
    visual = ctx.clf.model.visual
    images, labels = batch(ctx)
    after = []
    for gdr in (True, False):
        scores = new_scores(visual)
        opt = torch.optim.Adam(scores.values(), lr=1e-3)
        rmt_step(visual, ctx.clf.logits_from_features, scores, opt, images, labels, threshold=5e-3,
                 reg_weight=1e-4, gdr=gdr, lam=0.0, generator=torch.Generator().manual_seed(0))
        after.append(scores)
    for n in after[0]:
        assert torch.equal(after[0][n], after[1][n])


# -- masked forward --------------------------------------------------------------------------------
def test_selection_rule(ctx):
    visual = ctx.clf.model.visual
    names = select_masked(visual)
    assert names[0] == "conv1.weight" and len(names) == 1 + 2 * 4
    assert all(n.endswith(("in_proj_weight", "out_proj.weight")) for n in names[1:])
    assert len(select_masked(visual, mlp=True)) == 1 + 4 * 4
    assert select_masked(visual, layers="2-3") == ["conv1.weight"] + [
        f"transformer.resblocks.{i}.attn.{p}" for i in (2, 3) for p in ("in_proj_weight", "out_proj.weight")]


@torch.no_grad()
def test_masks_at_init_reproduce_zeroshot_exactly(ctx):
    clf = ctx.clf.eval()
    images, _ = batch(ctx)
    scores = new_scores(clf.model.visual)
    masked = clf.logits_from_features(masked_forward(clf.model.visual, scores, 5e-3, images))
    assert torch.equal(masked, clf(images))


def test_masked_off_weight_contributes_nothing(ctx):
    visual = copy.deepcopy(ctx.clf.model.visual).eval()
    images, _ = batch(ctx, 4)
    scores = new_scores(visual)
    name = "transformer.resblocks.1.attn.in_proj_weight"
    with torch.no_grad():
        scores[name][5, 7] = 5e-3  # at the threshold: off ("kept <=> score > threshold")
        scores[name][100, :] = -1.0
    out = masked_forward(visual, scores, 5e-3, images)
    # straight-through: switched-off scores still receive a gradient and can come back on
    (g,) = torch.autograd.grad(out.square().sum(), [scores[name]])
    assert g[100].abs().sum() > 0
    with torch.no_grad():
        w = dict(visual.named_parameters())[name]
        w[5, 7] = 0.0
        w[100, :] = 0.0
        ref = visual(images)
    assert torch.allclose(out, ref, atol=1e-6)


def test_teacher_runs_without_graph(ctx):
    visual = ctx.clf.model.visual
    seen = []
    hook = visual.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    try:
        images, labels = batch(ctx)
        scores = new_scores(visual)
        rmt_step(visual, ctx.clf.logits_from_features, scores, torch.optim.Adam(scores.values()), images, labels,
                 threshold=5e-3, reg_weight=1e-4, gdr=True, lam=1.0, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert seen == [False, True]  # teacher (no graph), then one student forward


# -- training ----------------------------------------------------------------------------------------
def fit(ctx, **overrides):
    c = fresh(ctx)
    cfg = MaskTuning.make_config("fixture", 4, overrides)
    return c, MaskTuning(cfg).fit(c.clf, c)


@pytest.fixture
def lr_per_step():
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    seen: list[float] = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    yield seen
    handle.remove()


def cosine(base: float, t: int, t_max: int) -> float:
    return base * 0.5 * (1 + math.cos(math.pi * t / t_max))


def test_schedule_cosine_per_epoch(ctx, lr_per_step):
    # the paper: cosine over the epochs, one rate for all steps of an epoch
    c = fresh(ctx)
    per_epoch = len(c.split("train")) // 4
    _, out = fit(ctx, lr=1e-3, epochs=3, batch_size=4)
    assert per_epoch > 1 and out["steps"] == 3 * per_epoch
    assert lr_per_step == pytest.approx([cosine(1e-3, e, 3) for e in range(3) for _ in range(per_epoch)],
                                        rel=1e-12)


def test_schedule_fixed_steps_cosine_per_step(ctx, lr_per_step):
    # a fixed step count: cosine over those steps, stepped per step, training stops mid-epoch
    c = fresh(ctx)
    per_epoch = len(c.split("train")) // 4
    steps = per_epoch + 1
    _, out = fit(ctx, lr=1e-3, steps=steps, batch_size=4)
    assert out["steps"] == steps
    assert lr_per_step == pytest.approx([cosine(1e-3, k, steps) for k in range(steps)], rel=1e-12)


def test_amt_trains(ctx):
    c, out = fit(ctx, gdr=False, lr=2e-3, steps=4)
    assert out["mask_sparsity"] > 0  # masks flipped: AMT updates (the official code does not)
    assert out["trainable_params"] == sum(p.numel() for n, p in c.clf.model.visual.named_parameters()
                                          if n in select_masked(c.clf.model.visual))


def test_learning_fixed_seed(ctx, tmp_path):
    from bench.evaluation import evaluate

    before, _ = evaluate(fresh(ctx), "test")
    c = fresh(ctx)
    c.artifact_dir = tmp_path
    out = MaskTuning(MaskTuning.make_config("fixture", 4, {"lr": "1e-3", "steps": "10"})).fit(c.clf, c)
    c.encoder_id = "masked"
    after, _ = evaluate(c, "test")
    assert 0 < out["mask_sparsity"] < 100 and 0 < out["mask_sparsity_encoder"] < out["mask_sparsity"]
    assert after > before, (before, after, out)
    # baked: exactly the switched-off weights are zero now, and the file holds the same masks
    masks = load_masks(out["masks_file"])
    params = dict(c.clf.model.visual.named_parameters())
    orig = dict(ctx.clf.model.visual.named_parameters())
    for n, m in masks.items():
        assert torch.equal(params[n], orig[n] * m)
    assert sparsity(masks)[0] == pytest.approx(out["mask_sparsity"])
    # stage reuse: export + restore rebuild the same encoder
    method = MaskTuning(MaskTuning.make_config("fixture", 4))
    method.masks = masks
    method.export(None, tmp_path / "stage")
    again = fresh(ctx)
    method.restore(again.clf, again, tmp_path / "stage")
    for n, p in again.clf.model.visual.named_parameters():
        assert torch.equal(p, params[n])


def test_fit_without_artifact_dir_saves_nothing(ctx):
    _, out = fit(ctx, lr=1e-4, steps=1, gdr=True)
    assert out["masks_file"] is None and out["mask_sparsity"] == 0.0


# -- files and baking --------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    masks = {"conv1.weight": torch.rand(5, 3, 3, 3, generator=g) > 0.3,  # 135 bits: not a multiple of 8
             "a.in_proj_weight": torch.rand(7, 11, generator=g) > 0.9}
    path = save_masks(masks, tmp_path / "m" / "mask.safetensors")
    assert path.stat().st_size < 400
    back = load_masks(path)
    assert back.keys() == masks.keys()
    for n in masks:
        assert back[n].dtype == torch.bool and torch.equal(back[n], masks[n])


@torch.no_grad()
def test_baking_matches_masked_forward(ctx):
    visual = ctx.clf.model.visual.eval()
    images, _ = batch(ctx)
    g = torch.Generator().manual_seed(3)
    scores = {n: torch.rand(s.shape, generator=g) * 1e-2 for n, s in new_scores(visual).items()}
    masked = masked_forward(visual, scores, 5e-3, images)
    clf = copy.deepcopy(ctx.clf)
    apply_masks(clf, binary_masks(scores, 5e-3))
    assert torch.allclose(clf.encode(images), masked, atol=1e-6)


# -- configuration -------------------------------------------------------------------------------------
def test_defaults_and_lambda_table():
    assert MaskTuning.make_config("imagenet", 16).lr == 3e-5 and MaskTuning.make_config("imagenet", 16).epochs == 10
    cfg = MaskTuning.make_config("caltech101", 16, {"mlp": "true", "steps": "none"})
    assert (cfg.lr, cfg.epochs, cfg.mlp, cfg.steps, cfg.gdr_lambda) == (8e-5, 30, True, None, 1.0)
    assert readme_lambda("caltech101", 16) == 0.3 and readme_lambda("food101", 16) == 1.0
    assert readme_lambda("caltech101", 4) == 1.0
