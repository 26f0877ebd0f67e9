"""ProGrad and CoCoOp: each checked against its official computation written out here from the papers'
equations and the official code's structure (prompts assembled in token-embedding space, the full 77-token
text pass, the projected gradient, the image-conditioned context), on ``tiny`` and on ViT-B/16's text
tower; CoCoOp's class chunks; stacking and the stages ``+mask`` reuses; learning on the pre-trained model."""
from __future__ import annotations

import dataclasses

import open_clip
import pytest
import torch
import torch.nn.functional as F

from bench import BenchError
from bench.methods.cocoop import CoCoOp, CoCoOpConfig, ConditionalPromptHead
from bench.methods.prograd import ProGrad, ProGradConfig, project
from bench.methods._prompt import PromptHead
from bench.registry import parse_stack
from bench.spec import TrialSpec
from bench.trial import build_context, run_trial, seed_everything
from test_baselines import pretrained_spec

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["red", "green", "dark_blue", "traffic light"]


# -- the official computations, from their equations ---------------------------------------------------

def official_text(model, tokenized: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """CLIP's text encoder on assembled prompt embeddings: + positions, the causal transformer over all
    77 tokens, ln_final, the end token (argmax of the ids), projection."""
    x = prompts + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    return x[torch.arange(x.shape[0]), tokenized.argmax(-1)] @ model.text_projection


def prograd_official_init(model, tokenizer, template: str, n_ctx: int):
    """ProGrad's PromptLearner with CTX_INIT: the words of the template (``" {}."`` removed, counted by
    spaces) fill the last context vectors, zeros before; the placeholder prompt is ``"X ... X <words>"``."""
    words = template.replace(" {}.", "")
    k = len(words.split(" "))
    ctx = torch.zeros(n_ctx, model.token_embedding.weight.shape[1])
    ctx[n_ctx - k:] = model.token_embedding(tokenizer([words]))[0, 1:1 + k]
    return ctx, " ".join(["X"] * (n_ctx - k)) + " " + words


def prograd_official_student(model, tokenizer, names, prefix_text, ctx, n_ctx):
    tokenized = tokenizer([f"{prefix_text} {n.replace('_', ' ')}." for n in names])
    emb = model.token_embedding(tokenized)
    prompts = torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(len(names), -1, -1), emb[:, 1 + n_ctx:]], dim=1)
    return official_text(model, tokenized, prompts)


def prograd_official_gradient(student_text, teacher_text, feats, labels, scale, ctx, lam):
    """``trainer.py::prograd_backward_and_update`` for one tensor: g_kl, g_ce; where their cosine is
    negative, g = g_ce - lam * (g_ce . g_kl/|g_kl|) g_kl/|g_kl|. Returns (g, cosine)."""
    image = feats / feats.norm(dim=-1, keepdim=True)
    student = scale * image @ (student_text / student_text.norm(dim=-1, keepdim=True)).t()
    teacher = scale * image @ (teacher_text / teacher_text.norm(dim=-1, keepdim=True)).t()
    xe = F.cross_entropy(student, labels)
    kl = (-F.softmax(teacher, -1) * F.log_softmax(student, -1)).sum(1).mean()
    (b,) = torch.autograd.grad(kl, ctx, retain_graph=True)
    (a,) = torch.autograd.grad(xe, ctx)
    b_hat = b / torch.linalg.norm(b)
    cos = torch.dot((a / torch.linalg.norm(a)).flatten(), b_hat.flatten())
    g = a - lam * torch.dot(a.flatten(), b_hat.flatten()) * b_hat if cos < 0 else a
    return g, float(cos)


def cocoop_official_logits(model, tokenizer, names, ctx, meta: list[torch.Tensor], feats):
    """``trainers/cocoop.py``: prompts ``[SOS, ctx + pi(x), class tokens]`` per image, pi = the Meta-Net on
    the normalised image feature, logits = scale * image . normalised class text, image by image."""
    w1, b1, w2, b2 = meta
    tokenized = tokenizer([f"a photo of a {n.replace('_', ' ')}." for n in names])
    emb = model.token_embedding(tokenized)
    n_ctx = ctx.shape[0]
    image = feats / feats.norm(dim=-1, keepdim=True)
    bias = F.linear(F.relu(F.linear(image, w1, b1)), w2, b2)
    rows = []
    for i in range(image.shape[0]):
        shifted = (ctx + bias[i]).unsqueeze(0).expand(len(names), -1, -1)
        text = official_text(model, tokenized, torch.cat([emb[:, :1], shifted, emb[:, 1 + n_ctx:]], dim=1))
        rows.append(model.logit_scale.exp() * image[i] @ (text / text.norm(dim=-1, keepdim=True)).t())
    return torch.stack(rows)


# -- the plugins against them ----------------------------------------------------------------------

def check_prograd_head(model, tokenizer, feats, labels, atol):
    template = "a type of pet, a photo of a {}."  # "pet," is two BPE tokens: the official word count applies
    cfg = ProGradConfig(template=template)
    head = PromptHead(model, tokenizer, NAMES, cfg, torch.Generator(), template=template).train()
    ctx0, prefix_text = prograd_official_init(model, tokenizer, template, cfg.n_ctx)
    torch.testing.assert_close(head.ctx.detach(), ctx0)
    ctx = head.ctx.detach().clone().requires_grad_(True)
    official = prograd_official_student(model, tokenizer, NAMES, prefix_text, ctx, cfg.n_ctx)
    torch.testing.assert_close(head.encode(), official, atol=atol, rtol=1e-4)
    scale = float(model.logit_scale.exp())
    torch.testing.assert_close(head(feats), scale * F.normalize(feats, dim=-1) @ F.normalize(official, dim=-1).t(),
                               atol=atol * scale, rtol=1e-4)


def check_cocoop_head(model, tokenizer, feats, labels, atol, chunks=(0,)):
    heads = [ConditionalPromptHead(model, tokenizer, NAMES, CoCoOpConfig(class_chunk=c),
                                   torch.Generator().manual_seed(3)).train() for c in chunks]
    head = heads[0]
    words = model.token_embedding(tokenizer(["a photo of a"]))[0, 1:5]
    torch.testing.assert_close(head.ctx.detach(), words)
    hidden = model.visual.output_dim // 16
    assert [tuple(p.shape) for p in head.meta_net.parameters()] == [
        (hidden, model.visual.output_dim), (hidden,), (head.ctx.shape[1], hidden), (head.ctx.shape[1],)]
    params = head.trainable()
    want = cocoop_official_logits(model, tokenizer, NAMES, params[0], params[1:], feats)
    want_grads = torch.autograd.grad(F.cross_entropy(want, labels), params)
    for h in heads:
        got = h(feats)
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)
        grads = torch.autograd.grad(F.cross_entropy(got, labels), h.trainable())
        for g, w in zip(grads, want_grads):
            torch.testing.assert_close(g, w, atol=atol, rtol=1e-3)
    return heads


def test_prograd_and_cocoop_heads_are_the_official_computation_on_tiny(tiny):
    model, tokenizer = tiny
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(3, model.visual.output_dim, generator=gen)
    labels = torch.tensor([0, 3, 1])
    check_prograd_head(model, tokenizer, feats, labels, atol=1e-5)
    heads = check_cocoop_head(model, tokenizer, feats, labels, atol=1e-5, chunks=(0, 1, 3))
    # the class chunks change only the peak memory: the same logits up to float rounding
    for h in heads[1:]:
        torch.testing.assert_close(h(feats), heads[0](feats), atol=2e-6, rtol=0)


def test_prograd_and_cocoop_on_a_random_vit_b16_text_tower():
    """ViT-B/16's text tower (random weights) with a small image tower: neither method touches the image
    tower, whose 224-px pass alone costs seconds on a CPU; the image features are random 512-d vectors."""
    cfg = open_clip.get_model_config("ViT-B-16")
    vision = dict(image_size=16, layers=1, width=64, head_width=32, patch_size=8)
    torch.manual_seed(0)
    model = open_clip.CLIP(cfg["embed_dim"], vision, cfg["text_cfg"]).requires_grad_(False)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    assert (model.visual.output_dim, model.transformer.width, len(model.transformer.resblocks)) == (512, 512, 12)
    feats = torch.randn(1, 512, generator=torch.Generator().manual_seed(1))  # one image: CoCoOp's batch
    labels = torch.tensor([2])
    check_prograd_head(model, tokenizer, feats, labels, atol=5e-5)
    (head,) = check_cocoop_head(model, tokenizer, feats, labels, atol=5e-5)
    assert sum(p.numel() for p in head.trainable()) == 35_360  # 4 x 512 context + Meta-Net 512 -> 32 -> 512


def test_prograd_projection_removes_only_the_conflicting_component():
    g_kl = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    conflicting, agreeing = torch.tensor([[-2.0, 1.0], [0.0, 3.0]]), torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    torch.testing.assert_close(project(conflicting, g_kl, 1.0), torch.tensor([[0.0, 1.0], [0.0, 3.0]]))
    torch.testing.assert_close(project(conflicting, g_kl, 0.8), torch.tensor([[-0.4, 1.0], [0.0, 3.0]]))
    assert project(agreeing, g_kl, 1.0) is agreeing
    assert project(conflicting, torch.zeros(2, 2), 1.0) is conflicting  # no teacher gradient: nothing to remove


def test_prograd_fit_steps_on_the_official_projected_gradient(fixture_root):
    """One optimizer step of the plugin's fit (one batch, no warm-up) against the official update: SGD
    with weight decay on ProGrad's gradient, from ProGrad's initial context."""
    template = "a type of pet, a photo of a {}."
    # the pre-trained model, seed 3: a batch whose two gradients conflict (at ProGrad's initial context the
    # student is the teacher, so they mostly agree)
    spec = TrialSpec(run="t", suite="t", dataset="fixture", shots=4, seed=3, stack="prograd", pretrained="bundled",
                     data_root=str(fixture_root))
    seed_everything(3)
    ctx = build_context(spec)
    model, tokenizer, names = ctx.clf.model, ctx.tokenizer, ctx.data.classnames
    settings = {"epochs": 1, "warmup_epochs": 0, "batch_size": 64, "feature_views": 1, "template": template,
                "grad_lambda": 0.8}
    method = ProGrad(ProGrad.make_config("fixture", 4, settings))
    out = method.fit(ctx.clf, ctx)
    cfg = method.config
    feats = ctx.features("train", ctx.train_transform(tuple(cfg.crop_scale)), views=1)[0]
    labels = ctx.labels("train")
    ctx0, prefix_text = prograd_official_init(model, tokenizer, template, cfg.n_ctx)
    c = ctx0.clone().requires_grad_(True)
    student = prograd_official_student(model, tokenizer, names, prefix_text, c, cfg.n_ctx)
    with torch.no_grad():
        teacher = model.encode_text(tokenizer([template.format(n.replace("_", " ")) for n in names]))
    g, cos = prograd_official_gradient(student, teacher, feats, labels, float(model.logit_scale.exp()), c, 0.8)
    assert cos < 0  # the projection is what is checked
    want = ctx0 - cfg.lr * (g + cfg.weight_decay * ctx0)
    torch.testing.assert_close(ctx.clf.head.ctx, want, atol=1e-6, rtol=1e-4)
    assert out["trainable_params"] == cfg.n_ctx * ctx0.shape[1] and out["grad_lambda"] == 0.8


# -- settings, stacks, protocols ---------------------------------------------------------------------

def test_prograd_settings_follow_the_official_scripts_and_readme():
    assert ProGrad.make_config("dtd", 16).grad_lambda == 0.8
    assert ProGrad.make_config("dtd", 4).grad_lambda == 1.0
    assert ProGrad.make_config("oxford_pets", 8).grad_lambda == 1.0
    cfg = ProGrad.make_config("oxford_pets", 1)
    assert (cfg.template, cfg.epochs, cfg.n_ctx, cfg.batch_size, cfg.lr) == (
        "a type of pet, a photo of a {}.", 50, 16, 32, 0.002)
    assert ProGrad.make_config("syn_colour", 16).template == ""  # the dataset's own prompt
    with pytest.raises(BenchError, match="not both"):
        ProGrad.make_config("dtd", 16, {"ctx_init": "a photo of a"})
    cocoop = CoCoOp.make_config("imagenet", 16)
    assert (cocoop.n_ctx, cocoop.ctx_init, cocoop.batch_size, cocoop.epochs, cocoop.lr) == (
        4, "a photo of a", 1, 10, 0.002)
    with pytest.raises(BenchError, match="csc must be false"):
        CoCoOp.make_config("imagenet", 16, {"csc": "true"})


@pytest.mark.parametrize("stack, pair", [("coop+prograd", "'coop' and 'prograd'"),
                                         ("cocoop+coop", "'cocoop' and 'coop'"),
                                         ("prograd+cocoop", "'prograd' and 'cocoop'")])
def test_two_prompt_learners_are_refused_in_one_line(stack, pair):
    with pytest.raises(BenchError) as info:
        parse_stack(stack)
    message = str(info.value)
    assert pair in message and "text prompt" in message and "\n" not in message
    assert [m.name for m in parse_stack(stack.split("+")[0] + "+mask")][0] == "mask"  # masks are learned first


def test_plus_mask_reuses_the_learned_masks(fixture_root, tmp_path):
    fast = {"mask": {"epochs": "1"}, "prograd": {"epochs": "1"}, "cocoop": {"epochs": "1", "feature_views": "1"}}
    base = TrialSpec(run="t", suite="t", dataset="fixture", shots=2, seed=1, stack="mask", pretrained="none",
                     data_root=str(fixture_root), cache_dir=str(tmp_path / "cache"), overrides=fast,
                     infer_images=0)
    assert "reused_stage" not in run_trial(base)["extras"]
    for stack in ("prograd+mask", "cocoop+mask"):
        row = run_trial(dataclasses.replace(base, stack=stack))
        assert row["status"] == "ok" and "reused_stage" in row["extras"], (stack, row.get("error"))


# -- learning on the pre-trained tiny model ----------------------------------------------------------

# syn_novel's class names were never seen by the tiny model's text tower: zero-shot is near chance and the
# prompt is all a method can learn from, so both mechanisms have the most room there. Measured with the
# synthetic suite's settings at 4 shots (CoCoOp cut to 4 epochs to keep the test short): zero-shot 11.75,
# ProGrad 34.25, CoCoOp 49.0; the margins are about half the gains.
@pytest.fixture(scope="module")
def zero_shot_top1():
    return run_trial(pretrained_spec("zeroshot"))["top1"]


@pytest.mark.parametrize("stack, settings, margin", [("prograd", {}, 11), ("cocoop", {"epochs": 4}, 18)])
def test_learns_well_beyond_zero_shot_on_the_pretrained_model(tmp_path, zero_shot_top1, stack, settings, margin):
    spec = pretrained_spec(stack)
    spec = dataclasses.replace(spec, results=str(tmp_path),
                               overrides={stack: {**spec.overrides.get(stack, {}), **settings}})
    row = run_trial(spec)
    assert row["top1"] >= zero_shot_top1 + margin, (stack, zero_shot_top1, row["top1"])
