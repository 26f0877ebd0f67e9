"""Visual prompt tokens: VPT-deep (the UPT release's and MaPLe's variants) and UPT.

Each official computation is written out here from its equations — the token sequence assembled by hand
around the frozen tower's own blocks, UPT's prompt block from its weights — and the plugins' logits and
gradients are checked against it, on the tiny CLIP and on a random-init ViT-B/16 at 224 px. Then: the tokens
reach the encoder identity (feature cache), stacks with ``mask``, base-to-new, and learning on the
pre-trained tiny model.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from bench import BenchError
from bench.cache import module_fingerprint
from bench.classifier import ClipClassifier, ZeroShotHead
from bench.methods._visual_prompts import DeepPrompts
from bench.methods.coop import CoOpConfig, PromptHead
from bench.methods.upt import UnifiedHead, UnifiedPrompt, UnifiedVisualPrompts
from bench.registry import canonical_stack, get_method, parse_stack

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["red", "green", "dark_blue"]


@pytest.fixture(scope="module")
def vit_b16():
    """A random-init open_clip ViT-B/16 (224 px) and its tokenizer."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval().requires_grad_(False)
    return model, open_clip.get_tokenizer("ViT-B-16"), 224


@pytest.fixture(scope="module")
def tiny_model():
    from bench.models import load_model

    model, _, tokenizer = load_model("tiny", "none")
    return model.eval().requires_grad_(False), tokenizer, 32


# ViT-B/16 at 224 px costs ~3 s per forward and backward of one image on one CPU thread: one image there.
@pytest.fixture(params=["tiny", "vit_b16"])
def clip(request):
    return request.getfixturevalue("tiny_model" if request.param == "tiny" else "vit_b16")


# -- the official computations, written out ------------------------------------------------------------
def embed(visual, images):
    """conv1 -> patches, class token, positional embedding: [N, 1 + patches, D] (before ln_pre)."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    return torch.cat([cls, x], dim=1) + visual.positional_embedding


def pooled(visual, x):
    """Class-token pooling and projection: ln_post(x[:, 0]) @ proj."""
    return visual.ln_post(x[:, 0]) @ visual.proj


def vpt_deep_upt_release(visual, images, flat):
    """UPT release's forward_prompt_deep: ``flat`` is its (P * L, D) parameter, read as reshape(P, L, D);
    block i gets [CLS, layer i's tokens, patches] (the previous prompt outputs dropped); after ln_pre."""
    blocks = visual.transformer.resblocks
    p = flat.shape[0] // len(blocks)
    per_layer = flat.reshape(p, len(blocks), -1).permute(1, 0, 2)
    x = visual.ln_pre(embed(visual, images))
    for i, block in enumerate(blocks):
        spatial = x[:, 1:] if i == 0 else x[:, 1 + p:]
        x = block(torch.cat([x[:, :1], per_layer[i].expand(x.shape[0], -1, -1), spatial], dim=1))
    return pooled(visual, x)


def vpt_maple(visual, images, tokens):
    """MaPLe's VPT: layer 0's tokens appended after the patches before ln_pre; blocks 1..depth-1 replace the
    last P positions with their own."""
    p = tokens.shape[1]
    x = torch.cat([embed(visual, images), tokens[0].expand(images.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x)
    for i, block in enumerate(visual.transformer.resblocks):
        if 1 <= i < tokens.shape[0]:
            x = torch.cat([x[:, :-p], tokens[i].expand(x.shape[0], -1, -1)], dim=1)
        x = block(x)
    return pooled(visual, x)


def upt_block(u: UnifiedPrompt) -> torch.Tensor:
    """The release's block, evaluation mode: the sequence-first attention over a [1, 8, D] prompt sees 8
    sequences of length 1, so softmax over its one key is 1 and the attention is out_proj(v_proj(x))."""
    src = u.prompt[0]
    d = src.shape[-1]
    w, b = u.attn.in_proj_weight, u.attn.in_proj_bias
    attended = F.linear(F.linear(src, w[2 * d:], b[2 * d:]), u.attn.out_proj.weight, u.attn.out_proj.bias)
    src = F.layer_norm(src + attended, (d,), u.norm1.weight, u.norm1.bias)
    hidden = F.relu(F.linear(F.layer_norm(src, (d,), u.norm2.weight, u.norm2.bias), u.linear1.weight, u.linear1.bias))
    return src + F.linear(hidden, u.linear2.weight, u.linear2.bias)


def upt_release_logits(model, tokenizer, u: UnifiedPrompt, images):
    """UPT's CustomCLIP.forward: visual prompts after CLS before ln_pre (forward_prompt), CoOp's text
    encoder over the full 77 tokens of "a photo of a <class>." with its 4 words replaced by the context."""
    out = upt_block(u)
    ctx, visual_tokens = out[:u.n_ctx], F.linear(out[u.n_ctx:], u.to_image.weight, u.to_image.bias)
    visual = model.visual
    x = embed(visual, images)
    x = torch.cat([x[:, :1], visual_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
    x = visual.transformer(visual.ln_pre(x))
    image = pooled(visual, x)
    ids = tokenizer([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
    emb = model.token_embedding(ids)
    prompts = torch.cat([emb[:, :1], ctx.expand(len(CLASSES), -1, -1), emb[:, 1 + u.n_ctx:]], dim=1)
    t = model.transformer(prompts + model.positional_embedding, attn_mask=model.attn_mask)
    t = model.ln_final(t)[torch.arange(len(CLASSES)), ids.argmax(-1)] @ model.text_projection
    return model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(t, dim=-1).t()


def zero_shot_weights(model, tokenizer, template):
    with torch.no_grad():
        return F.normalize(model.encode_text(tokenizer([template.format(c.replace("_", " ")) for c in CLASSES])), dim=-1)


def images_and_labels(size, n=None):
    n = n or (2 if size < 224 else 1)
    gen = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, size, size, generator=gen), torch.arange(n) % len(CLASSES)


def assert_same_step(ours, official, params, labels, tol):
    """Equal logits, and equal gradients of the cross-entropy with respect to ``params``."""
    torch.testing.assert_close(ours, official, atol=tol, rtol=tol)
    g_ours = torch.autograd.grad(F.cross_entropy(ours, labels), params)
    g_official = torch.autograd.grad(F.cross_entropy(official, labels), params)
    for a, b in zip(g_ours, g_official):
        assert float(b.abs().max()) > 0
        torch.testing.assert_close(a, b, atol=tol * float(b.abs().max()), rtol=tol)
    return g_ours


def prompted_zero_shot_logits(model, tokenizer, template: str, prompts, images):
    """The zero-shot classifier's logits with ``prompts`` installed in the image tower (removed after), and
    the class weights they were made with."""
    weights = zero_shot_weights(model, tokenizer, template)
    clf = ClipClassifier(model, ZeroShotHead(weights, float(model.logit_scale.exp())))
    prompts.install(model.visual)
    try:
        return clf(images), weights
    finally:
        prompts.uninstall(model.visual)


# -- VPT-deep ---------------------------------------------------------------------------------------
def test_vpt_deep_matches_the_upt_release_per_layer_replacement(clip):
    model, tokenizer, size = clip
    visual = model.visual
    layers, width = len(visual.transformer.resblocks), visual.class_embedding.shape[0]
    flat = (torch.randn(4 * layers, width, generator=torch.Generator().manual_seed(1)) * 0.5).requires_grad_()
    prompts = DeepPrompts(layers, 4, width, torch.Generator())
    prompts.tokens = torch.nn.Parameter(flat.reshape(4, layers, width).permute(1, 0, 2).detach().clone())
    images, labels = images_and_labels(size)
    ours, weights = prompted_zero_shot_logits(model, tokenizer, "a photo of a {}.", prompts, images)
    assert not hasattr(visual, "prompts")
    # the official computation, on the plain tower (hooks removed)
    official = float(model.logit_scale.exp()) * F.normalize(vpt_deep_upt_release(visual, images, flat), dim=-1) @ weights.t()
    torch.testing.assert_close(ours, official, atol=2e-4, rtol=2e-4)
    g_tokens, = torch.autograd.grad(F.cross_entropy(ours, labels), [prompts.tokens])
    g_flat, = torch.autograd.grad(F.cross_entropy(official, labels), [flat])
    want = g_flat.reshape(4, layers, width).permute(1, 0, 2)
    torch.testing.assert_close(g_tokens, want, atol=1e-4 * float(want.abs().max()), rtol=1e-3)
    assert all(float(g.abs().sum()) > 0 for g in g_tokens)  # every layer's tokens matter


def test_tokens_are_part_of_the_encoder_identity_and_come_off_cleanly(tiny_model):
    model, _, size = tiny_model
    visual = model.visual
    images = images_and_labels(size)[0]
    with torch.no_grad():
        plain = visual(images)
    before = module_fingerprint(visual)
    prompts = DeepPrompts(len(visual.transformer.resblocks), 4, 128, torch.Generator().manual_seed(0)).install(visual)
    try:
        assert module_fingerprint(visual) != before  # the feature cache sees the tokens
        with torch.no_grad():
            assert not torch.allclose(visual(images), plain, atol=1e-4)
            prompts.tokens.add_(1.0)
        assert module_fingerprint(visual) != before
        with pytest.raises(BenchError, match="already holds visual prompts"):
            DeepPrompts(1, 4, 128, torch.Generator()).install(visual)
    finally:
        prompts.uninstall(visual)
    assert module_fingerprint(visual) == before and not hasattr(visual, "prompts")
    with torch.no_grad():
        torch.testing.assert_close(visual(images), plain)


def test_vpt_deep_maple_variant_matches_maples_vpt(clip):
    model, tokenizer, size = clip
    visual = model.visual
    cfg = get_method("vpt_deep_maple").make_config("dtd", 16)
    assert (cfg.n_tokens, cfg.position, cfg.through_ln_pre, cfg.batch_size, cfg.lr, cfg.epochs) == (
        8, "end", True, 4, 0.0025, 5)
    layers, width = len(visual.transformer.resblocks), visual.class_embedding.shape[0]
    prompts = DeepPrompts(layers, 8, width, torch.Generator().manual_seed(2), init_std=0.5, position="end",
                          through_ln_pre=True)
    images, labels = images_and_labels(size)
    ours, weights = prompted_zero_shot_logits(model, tokenizer, cfg.text_template, prompts, images)
    official = float(model.logit_scale.exp()) * F.normalize(vpt_maple(visual, images, prompts.tokens), dim=-1) @ weights.t()
    assert_same_step(ours, official, [prompts.tokens], labels, 2e-4)


# -- UPT --------------------------------------------------------------------------------------------
def upt_parts(model, tokenizer, mix=False):
    text_width, width = model.token_embedding.weight.shape[1], model.visual.class_embedding.shape[0]
    torch.manual_seed(4)
    u = UnifiedPrompt(4, 4, text_width, width, torch.Generator().manual_seed(5), init_std=0.5, mix_tokens=mix)
    text = PromptHead(model, tokenizer, CLASSES, CoOpConfig(n_ctx=4, init_std=0.0), torch.Generator())
    return u, ClipClassifier(model, UnifiedHead(text, u, float(model.logit_scale.exp())))


def test_upt_matches_the_release_prompt_block_and_both_outputs(clip):
    model, tokenizer, size = clip
    u, clf = upt_parts(model, tokenizer)
    images, labels = images_and_labels(size)
    prompts = UnifiedVisualPrompts(u, 4).install(model.visual)
    try:
        u.eval()  # dropout off: the release's evaluation-mode computation
        ours = clf(images)
    finally:
        prompts.uninstall(model.visual)
    params = list(u.parameters())
    names = [n for n, _ in u.named_parameters()]
    grads = assert_same_step(ours, upt_release_logits(model, tokenizer, u, images), params, labels, 2e-4)
    g = dict(zip(names, grads))
    d = u.prompt.shape[-1]
    # the tokens never attend to each other: query and key projections get no gradient; values do
    values = float(g["attn.in_proj_weight"][2 * d:].abs().max())
    assert values > 0 and float(g["attn.in_proj_weight"][:2 * d].abs().max()) < 1e-6 * values
    # both outputs are used: the text half through the context, the visual half through to_image
    assert float(g["to_image.weight"].abs().max()) > 0 and float(g["prompt"][0, :4].abs().max()) > 0
    assert sum(p.numel() for p in params) == (
        8 * d + 4 * d * d + 4 * d + 2 * 2 * d + 2 * (d * d + d) + (d + 1) * model.visual.class_embedding.shape[0])


def test_upt_runs_its_block_once_per_output_with_own_dropout(tiny_model):
    model, tokenizer, size = tiny_model
    u, clf = upt_parts(model, tokenizer)
    prompts = UnifiedVisualPrompts(u, 4).install(model.visual)
    calls = []
    u.attn.register_forward_hook(lambda m, a, out: calls.append(1))
    try:
        clf.train()
        torch.manual_seed(0)
        first = clf(images_and_labels(size)[0])
        assert len(calls) == 2  # the visual half and the text half: two passes per step, as released
        torch.manual_seed(1)
        assert not torch.allclose(first, clf(images_and_labels(size)[0]))  # dropout is live in training
        clf.eval()
        with torch.no_grad():
            torch.testing.assert_close(clf(images_and_labels(size)[0]), clf(images_and_labels(size)[0]))
    finally:
        prompts.uninstall(model.visual)


def test_upt_mixing_variant_lets_the_tokens_attend_to_each_other(tiny_model):
    model, tokenizer, _ = tiny_model
    assert get_method("upt_mixing").make_config("dtd", 16).mix_tokens
    u, _ = upt_parts(model, tokenizer, mix=True)
    u.eval()
    grad, = torch.autograd.grad(u.text_context().sum(), [u.attn.in_proj_weight])
    d = u.prompt.shape[-1]
    assert float(grad[:2 * d].abs().max()) > 0  # queries and keys now matter
    assert not torch.allclose(u.encoded(), upt_block(u))


# -- composition, identity, protocols --------------------------------------------------------------------
def test_parts_and_stacks():
    assert parse_stack("mask+vpt_deep")[0].name == "mask" and canonical_stack("mask+upt") == "upt+mask"
    assert canonical_stack("mask+vpt_deep") == "vpt_deep+mask"
    assert [p.name for p in parse_stack("coop+vpt_deep")] == ["vpt_deep", "coop"]  # tokens train before the prompt
    for stack, part in (("upt+coop", "text prompt"), ("vpt_deep+upt", "image tokens"),
                        ("vpt_deep+vpt_deep_maple", "image tokens"), ("upt+linear_probe", "head")):
        with pytest.raises(BenchError, match=part):
            parse_stack(stack)


def test_a_tower_without_tokens_is_refused_in_one_line():
    from torch import nn

    from bench.methods._visual_prompts import image_tower_width

    with pytest.raises(BenchError, match="ViT"):
        image_tower_width(nn.Conv2d(3, 8, 3))


@pytest.fixture(scope="module")
def syn_spec(tmp_path_factory):
    """A spec on the pre-trained tiny model with the synthetic suite's settings (syn_novel, 4 shots, seed 1
    unless changed), sharing one feature and stage cache."""
    from test_baselines import pretrained_spec

    cache = tmp_path_factory.mktemp("cache")

    def make(stack, **kw):
        return dataclasses.replace(pretrained_spec(stack), cache_dir=str(cache), **kw)
    return make


def test_mask_stacks_reuse_the_mask_stage_and_train_tokens_on_the_masked_encoder(syn_spec, monkeypatch):
    from bench.methods.upt import UPT
    from bench.methods.vpt_deep import VPTDeep
    from bench.trial import run_trial

    from bench.models import load_model

    # a short, coarse mask stage (what is checked is its reuse and what the tokens train on)
    short_mask = {"mask": {**syn_spec("mask").overrides["mask"], "steps": 3, "lr": 0.01}}
    mask_only = run_trial(dataclasses.replace(syn_spec("mask"), overrides=short_mask))
    assert mask_only["mask_sparsity"] > 0
    plain = module_fingerprint(load_model("tiny", "bundled")[0].visual)
    seen = {}
    for cls in (VPTDeep, UPT):
        original = cls.fit

        def fit(self, clf, ctx, original=original):
            seen[self.name] = (ctx.encoder_id, module_fingerprint(clf.model.visual))
            return original(self, clf, ctx)
        monkeypatch.setattr(cls, fit.__name__, fit)
    fewer = {**short_mask, "vpt_deep": {"epochs": 2}, "upt": {"epochs": 2}}
    for stack in ("vpt_deep+mask", "upt+mask"):
        spec = syn_spec(stack)
        row = run_trial(dataclasses.replace(spec, overrides={**spec.overrides, **fewer}))
        extras = __import__("json").loads(row["extras"])
        assert extras["mask.reused_stage"]  # the masks were learned once, by the `mask` trial
        assert row["mask_sparsity"] == mask_only["mask_sparsity"]
        encoder_id, fingerprint = seen[stack.split("+")[0]]
        # the tokens are trained on the masked encoder, whose identity the trial took for its features
        assert encoder_id == fingerprint != plain


def test_base_to_new_rebuilds_the_heads_for_new_classes(syn_spec):
    from bench.trial import run_trial

    for stack in ("vpt_deep", "upt"):
        spec = syn_spec(stack, protocol="base2new")
        row = run_trial(dataclasses.replace(spec, overrides={**spec.overrides, stack: {"epochs": 2}}))
        assert row["top1_new"] >= 0 and row["hm"] >= 0 and row["n_test"] > 0


# -- learning on the pre-trained tiny model --------------------------------------------------------------
# syn_warmlight: an unseen warm colour cast over known classes. Zero-shot is poor (29.0) while the image
# features still carry the class, so tokens inside the image tower (both methods have them) have room to
# undo the cast. Margins about half the gains measured at the time of writing (4 shots, seed 1, the suite's
# settings: vpt_deep 55.75, upt 50.5).
@pytest.mark.parametrize("stack, margin", [("vpt_deep", 11), ("upt", 10)])
def test_learns_beyond_zero_shot_on_the_pretrained_model(tmp_path, syn_spec, stack, margin):
    from bench.trial import run_trial

    zero = run_trial(syn_spec("zeroshot", dataset="syn_warmlight"))["top1"]
    row = run_trial(syn_spec(stack, dataset="syn_warmlight", results=str(tmp_path)))
    assert row["top1"] >= zero + margin, (stack, zero, row["top1"])


# -- --compare paper ---------------------------------------------------------------------------------------
def test_compare_paper_reproduces_the_published_vpt_deep_and_upt_averages(tmp_path):
    from test_paper_tables import FEWSHOT11, _line, _report, _row, _write

    from bench.published import load_published

    pub = load_published()
    pub = pub[(pub.protocol == "fewshot") & (pub.source == "R-AMT project page figure")]
    cell = {(r.method, r.dataset, r.shots): r.top1 for r in pub.itertuples()}
    rows = []
    for shots in (1, 2, 4, 8, 16):
        for stack in ("vpt_deep", "upt", "vpt_deep_maple"):
            for d in FEWSHOT11:
                value = cell[("vpt_deep" if stack == "vpt_deep_maple" else stack, d, shots)]
                rows.append(_row(len(rows), stack, d, shots=shots, top1=value))
    text = _report(tmp_path, _write(tmp_path, rows))
    for shots in (1, 2, 4, 8, 16):
        compared = text.split(f"{shots}-shot: this run vs published")[1]
        for stack in ("vpt_deep", "upt"):
            ours, paper, diff = (float(c) for c in _line(compared, f"| {stack} |").strip(" |").split("|")[-3:])
            assert paper == cell[(stack, "average", shots)] and abs(ours - paper) <= 0.01 and abs(diff) <= 0.01
        # MaPLe's variant is another method: no paper value beside it
        maple = [c.strip() for c in _line(compared, "| vpt_deep_maple |").strip(" |").split("|")]
        assert maple[-2:] == ["-", "-"] and float(maple[-3]) == pytest.approx(cell[("vpt_deep", "average", shots)], abs=0.01)
    assert "no paper value for vpt_deep_maple" in text
