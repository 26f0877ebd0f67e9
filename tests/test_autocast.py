"""The mixed-precision paths that a GPU run takes, exercised on CPU under CPU autocast (bf16).

``mask.bf16=true`` and ``coop.precision=amp`` autocast on the trial's device, so on CPU they run
``torch.autocast("cpu", dtype=torch.bfloat16)`` where CUDA runs bf16 (mask) or fp16 (CoOp). Tolerances are
bf16's: about 3 significant digits per operation, so logits agree to a few hundredths and gradients point
the same way (cosine > 0.99) rather than agree digit for digit.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import bench.methods.mask as mask_module
from bench.classifier import ZeroShotHead
from bench.methods._masking import select_masked
from bench.methods._training import amp_dtype, resolve_precision
from bench.methods.coop import CoOp, CoOpConfig, PromptHead
from bench.methods.mask import MaskTuning, bf16_autocast, rmt_step
from bench.spec import TrialSpec
from bench.trial import build_context, seed_everything
from bench.evaluation import evaluate

CPU = torch.device("cpu")
CLASSES = ["red", "green", "dark_blue", "traffic light", "ewer"]


pytestmark = pytest.mark.usefixtures("one_thread")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


def fixture_context(root, stack: str):
    spec = TrialSpec(run="t", suite="t", dataset="fixture", shots=4, seed=1, stack=stack, pretrained="none",
                     data_root=str(root))
    seed_everything(1)
    return build_context(spec)


# -- mask (R-AMT), mask.bf16 ---------------------------------------------------------------------------

def test_bf16_autocast_follows_the_device():
    with bf16_autocast(CPU)():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.randn(2, 3) @ torch.randn(3, 2)).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_rmt_step_under_cpu_bf16_autocast_matches_fp32(tiny):
    model, _ = tiny
    visual = model.visual.train()
    gen = torch.Generator().manual_seed(0)
    head = ZeroShotHead(F.normalize(torch.randn(5, visual.output_dim, generator=gen), dim=-1), 100.0)
    images, labels = torch.randn(8, 3, 32, 32, generator=gen), torch.arange(8) % 5
    runs = {}
    for name, autocast in (("fp32", contextlib.nullcontext), ("bf16", bf16_autocast(CPU))):
        params = dict(visual.named_parameters())
        scores = {n: torch.full_like(params[n], 1e-2, requires_grad=True) for n in select_masked(visual)}
        opt = torch.optim.SGD(scores.values(), lr=0.0)  # keep the scores; compare loss and gradients
        loss = rmt_step(visual, head, scores, opt, images, labels, threshold=5e-3, reg_weight=1e-4, gdr=False,
                        lam=1.0, autocast=autocast)
        runs[name] = (loss, torch.cat([s.grad.flatten() for s in scores.values()]))
    (loss32, g32), (loss16, g16) = runs["fp32"], runs["bf16"]
    assert loss16 != loss32 and loss16 == pytest.approx(loss32, rel=2e-2)  # ran in bf16, and close
    assert cosine(g16, g32) > 0.99
    assert float(g16.norm() / g32.norm()) == pytest.approx(1.0, abs=0.05)


def test_mask_fit_with_bf16_runs_cpu_autocast(fixture_root, monkeypatch):
    used = []

    def spy(device):
        used.append(torch.device(device).type)
        return bf16_autocast(device)

    monkeypatch.setattr(mask_module, "bf16_autocast", spy)
    results = {}
    for bf16 in (False, True):
        ctx = fixture_context(fixture_root, "mask")
        method = MaskTuning(MaskTuning.make_config("fixture", 4, {"steps": 2, "batch_size": 8, "lr": 5e-3,
                                                                  "bf16": bf16}))
        out = method.fit(ctx.clf, ctx)
        results[bf16] = (out, evaluate(ctx, "test")[0])
    assert used == ["cpu"]  # only the bf16 run autocasts, on the trial's device
    (out32, top32), (out16, top16) = results[False], results[True]
    assert out16["train_loss"] == pytest.approx(out32["train_loss"], rel=2e-2)
    assert out32["mask_sparsity"] > 1.0  # two Adam steps (5e-3, 2.5e-3) move scores 1e-2 past 5e-3
    assert out16["mask_sparsity"] == pytest.approx(out32["mask_sparsity"], rel=0.05)
    assert abs(top16 - top32) <= 10.0  # 20 test images: at most two flip


# -- CoOp, coop.precision=amp ----------------------------------------------------------------------------

def test_amp_is_bf16_autocast_on_cpu_and_fp32_stays_the_default():
    assert resolve_precision("auto", CPU, "coop") == "fp32"
    assert resolve_precision("amp", CPU, "coop") == "amp"
    assert amp_dtype(CPU) == torch.bfloat16 and amp_dtype(torch.device("cuda")) == torch.float16


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_prompt_head_under_cpu_bf16_autocast_matches_fp32(tiny, shared_prefix):
    model, tokenizer = tiny
    head = PromptHead(model, tokenizer, CLASSES, CoOpConfig(n_ctx=8, shared_prefix=shared_prefix),
                      torch.Generator().manual_seed(0)).train()
    assert head.shared_prefix == shared_prefix
    gen = torch.Generator().manual_seed(1)
    feats, labels = torch.randn(8, 128, generator=gen), torch.arange(8) % len(CLASSES)
    runs = {}
    for name, autocast in (("fp32", contextlib.nullcontext()), ("bf16", torch.autocast("cpu", dtype=torch.bfloat16))):
        head.ctx.grad = None
        with autocast:
            logits = head(feats)
        F.cross_entropy(logits, labels).backward()
        runs[name] = (logits.detach(), head.ctx.grad.clone())
    (l32, g32), (l16, g16) = runs["fp32"], runs["bf16"]
    assert l16.dtype == torch.float32 and g16.dtype == torch.float32  # the context stays fp32 under autocast
    assert not torch.equal(l16, l32)
    torch.testing.assert_close(l16, l32, atol=0.15, rtol=0.02)  # logits scaled by 100: cosines to ~1e-3
    assert cosine(g16, g32) > 0.99


def test_coop_fit_with_amp_on_cpu_trains_like_fp32(fixture_root):
    results = {}
    for precision in ("fp32", "amp"):
        ctx = fixture_context(fixture_root, "coop")
        method = CoOp(CoOp.make_config("fixture", 4, {"epochs": 6, "feature_views": 2, "lr": 0.02,
                                                      "precision": precision}))
        out = method.fit(ctx.clf, ctx)
        results[precision] = (out, evaluate(ctx, "test")[0], ctx.clf.head.ctx.detach().clone())
    (out32, top32, ctx32), (out16, top16, ctx16) = results["fp32"], results["amp"]
    assert out16["precision"] == "amp" and ctx16.dtype == torch.float32
    assert out16["train_loss"] != out32["train_loss"]  # autocast ran
    assert out16["train_loss"] == pytest.approx(out32["train_loss"], rel=2e-2)
    init = torch.randn(ctx32.shape, generator=ctx.generator(10)) * 0.02  # as PromptHead draws it
    assert cosine(ctx16 - init, ctx32 - init) > 0.95  # the context moved the same way
    assert abs(top16 - top32) <= 10.0
