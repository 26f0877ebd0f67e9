"""CoOp's shared-prefix text path: the same features and context gradients as the plain path, used only
where it is exact, and the same fit either way."""
from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from bench.methods.coop import CoOp, CoOpConfig, PromptHead
from bench.spec import TrialSpec
from bench.trial import build_context, seed_everything
from bench.evaluation import evaluate

CLASSES = ["red", "green", "dark_blue", "traffic light", "2012 Mercedes-Benz Sprinter Van", "ewer"]


pytestmark = pytest.mark.usefixtures("one_thread")


def head_pair(model, tokenizer, classes=CLASSES, dtype=torch.float32, **settings):
    """(shared-prefix head, plain truncated head, plain full-length head) with the same initial context."""
    make = lambda **kw: PromptHead(model, tokenizer, classes, CoOpConfig(**settings, **kw),
                                   torch.Generator().manual_seed(0), dtype).train()
    return make(), make(shared_prefix=False), make(truncate=False)


def features_and_grad(head: PromptHead, image_feats: torch.Tensor, labels: torch.Tensor):
    head.ctx.grad = None
    F.cross_entropy(head(image_feats), labels).backward()
    with torch.no_grad():
        feats = head.encode()
    return feats, head.ctx.grad.clone()


def assert_same_as_plain(model, tokenizer, classes=CLASSES, atol=2e-5, **settings):
    shared, truncated, full = head_pair(model, tokenizer, classes, **settings)
    assert shared.shared_prefix and not truncated.shared_prefix and not full.shared_prefix
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(8, model.text_projection.shape[1], generator=gen)
    labels = torch.randint(0, len(classes), (8,), generator=gen)
    f_new, g_new = features_and_grad(shared, image, labels)
    for plain in (truncated, full):
        f_ref, g_ref = features_and_grad(plain, image, labels)
        torch.testing.assert_close(f_new, f_ref, atol=atol, rtol=1e-4)
        torch.testing.assert_close(g_new, g_ref, atol=atol, rtol=1e-3)
    assert float(g_new.abs().max()) > 1e-3  # a gradient that could be wrong
    return shared


@pytest.mark.parametrize("settings", [dict(n_ctx=16), dict(n_ctx=4), dict(ctx_init="a photo of a")])
def test_tiny_shared_prefix_matches_plain_path(tiny, settings):
    head = assert_same_as_plain(*tiny, **settings)
    prompts = head.ids[:, :head.length]
    assert head.length == int(prompts.argmax(-1).max()) + 1  # it stops at the last end token too


def test_tiny_shared_prefix_matches_encode_text(tiny):
    model, tokenizer = tiny
    head = PromptHead(model, tokenizer, CLASSES, CoOpConfig(ctx_init="a photo of a"),
                      torch.Generator().manual_seed(0)).eval()
    assert head.shared_prefix
    with torch.no_grad():
        want = model.encode_text(tokenizer([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES]))
        torch.testing.assert_close(head.text_features(), want, atol=1e-5, rtol=1e-5)


def small_clip(**text_cfg) -> torch.nn.Module:
    text = dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=2, **text_cfg)
    torch.manual_seed(0)
    vision = dict(image_size=16, layers=1, width=64, head_width=32, patch_size=8)
    return open_clip.CLIP(32, vision, text, quick_gelu=False).requires_grad_(False)


def test_layer_scale_and_gelu_blocks_are_reproduced(tiny):
    _, tokenizer = tiny
    model = small_clip(ls_init_value=0.5)
    block = model.transformer.resblocks[0]
    assert isinstance(block.ls_1, open_clip.transformer.LayerScale)
    with torch.no_grad():
        for p in model.transformer.parameters():  # LayerScale and biases away from their initial values
            p.add_(0.05 * torch.randn_like(p))
    assert_same_as_plain(model, tokenizer, n_ctx=8)


def test_eos_pooling_is_reproduced(tiny):
    _, tokenizer = tiny
    eot = int(tokenizer(["x"])[0].max())
    assert_same_as_plain(small_clip(pool_type="eos", eos_id=eot), tokenizer, n_ctx=8)


@pytest.mark.parametrize("settings", [dict(class_token_position="middle"), dict(class_token_position="front"),
                                      dict(csc=True), dict(truncate=False), dict(shared_prefix=False)])
def test_other_prompt_layouts_take_the_plain_path(tiny, settings):
    model, tokenizer = tiny
    head = PromptHead(model, tokenizer, CLASSES, CoOpConfig(n_ctx=4, **settings), torch.Generator().manual_seed(0))
    assert not head.shared_prefix


@pytest.mark.parametrize("text_cfg", [dict(no_causal_mask=True), dict(pool_type="last"), dict(qk_norm=True)])
def test_towers_it_cannot_reproduce_take_the_plain_path(tiny, text_cfg):
    _, tokenizer = tiny
    head = PromptHead(small_clip(**text_cfg), tokenizer, CLASSES, CoOpConfig(n_ctx=4), torch.Generator())
    assert not head.shared_prefix
    assert head(torch.randn(2, 32)).shape == (2, len(CLASSES))


def test_fp16_head_runs_the_prefix_in_half_precision(tiny):
    model, tokenizer = tiny
    shared, truncated, _ = head_pair(model, tokenizer, dtype=torch.float16, n_ctx=16)
    assert shared.shared_prefix and shared.tower.dtype == torch.float16
    image, labels = torch.randn(8, 128), torch.arange(8) % len(CLASSES)
    f_new, g_new = features_and_grad(shared, image, labels)
    f_ref, g_ref = features_and_grad(truncated, image, labels)
    assert f_new.dtype == g_new.dtype == torch.float16
    torch.testing.assert_close(f_new, f_ref, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(g_new.float(), g_ref.float(), atol=2e-3, rtol=5e-2)


def test_vit_b16_text_tower_shared_prefix_matches_plain_path():
    cfg = open_clip.get_model_config("ViT-B-16-quickgelu")  # its text tower, random; a small image tower
    vision = dict(image_size=16, layers=1, width=64, head_width=32, patch_size=8)
    torch.manual_seed(0)
    model = open_clip.CLIP(cfg["embed_dim"], vision, cfg["text_cfg"], quick_gelu=True).requires_grad_(False)
    assert (model.transformer.width, len(model.transformer.resblocks)) == (512, 12)
    tokenizer = open_clip.get_tokenizer("ViT-B-16-quickgelu")
    shared, truncated, _ = head_pair(model, tokenizer, CLASSES[:4], n_ctx=16)
    assert shared.shared_prefix
    image, labels = torch.randn(8, cfg["embed_dim"]), torch.arange(8) % 4
    f_new, g_new = features_and_grad(shared, image, labels)
    f_ref, g_ref = features_and_grad(truncated, image, labels)
    torch.testing.assert_close(f_new, f_ref, atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(g_new, g_ref, atol=5e-5, rtol=1e-3)


def test_coop_fit_same_accuracy_with_and_without_shared_prefix(fixture_root):
    runs = {}
    for shared in (True, False):
        spec = TrialSpec(run="t", suite="t", dataset="fixture", shots=4, seed=1, stack="coop",
                         pretrained="none", data_root=str(fixture_root))
        seed_everything(1)
        ctx = build_context(spec)
        method = CoOp(CoOp.make_config("fixture", 4, {"epochs": 8, "feature_views": 2, "lr": 0.02,
                                                      "shared_prefix": shared}))
        out = method.fit(ctx.clf, ctx)
        top1, _ = evaluate(ctx, "test")
        runs[shared] = (out, top1, ctx.clf.head.ctx.detach().clone())
    (out_new, top1_new, ctx_new), (out_ref, top1_ref, ctx_ref) = runs[True], runs[False]
    assert (out_new["text_path"], out_ref["text_path"]) == ("shared_prefix", "plain")
    assert top1_new == top1_ref
    assert out_new["train_loss"] == pytest.approx(out_ref["train_loss"], rel=1e-4)
    torch.testing.assert_close(ctx_new, ctx_ref, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ctx_new, torch.randn(ctx_new.shape, generator=ctx.generator(10)) * 0.02)
