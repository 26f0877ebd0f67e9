"""The embedded ``tiny`` CLIP: config, offline loading of the committed weights, zero-shot above chance."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).resolve().parents[1] / "harness" / "assets"
CONFIG = ASSETS / "tiny.json"
WEIGHTS = ASSETS / "tiny.safetensors"


@pytest.fixture(scope="module")
def tiny():
    os.environ["HF_HUB_OFFLINE"] = "1"
    import open_clip

    if "tiny" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG)
    model, _, preprocess = open_clip.create_model_and_transforms("tiny", pretrained=str(WEIGHTS))
    return model.eval(), preprocess, open_clip.get_tokenizer("tiny")


def test_config_is_openai_loadable():
    cfg = json.loads(CONFIG.read_text())
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    assert vision.get("head_width", 64) == 64
    assert text["heads"] == text["width"] // 64
    assert text["vocab_size"] == 49408
    assert vision["image_size"] % vision["patch_size"] == 0


def test_weights_are_small_and_complete(tiny):
    from safetensors.torch import load_file

    assert WEIGHTS.stat().st_size <= 25 * 2**20
    state = load_file(str(WEIGHTS))
    model, _, _ = tiny
    assert set(state) == set(model.state_dict())
    for key in ("visual.conv1.weight", "token_embedding.weight", "logit_scale"):
        assert torch.equal(model.state_dict()[key], state[key].float())
    # what OpenAI-CLIP-style loaders infer from the state dict matches the model
    width = state["visual.conv1.weight"].shape[0]
    assert model.visual.transformer.resblocks[0].attn.num_heads == width // 64
    assert model.transformer.resblocks[0].attn.num_heads == state["ln_final.weight"].shape[0] // 64


def test_tokenizer_matches_context_length(tiny):
    model, _, tokenizer = tiny
    tokens = tokenizer(["a photo of a red circle on a striped background."])
    assert tokens.shape == (1, json.loads(CONFIG.read_text())["text_cfg"]["context_length"])
    assert model.positional_embedding.shape[0] == tokens.shape[1]


@torch.no_grad()
def test_zero_shot_colour_well_above_chance(tiny):
    from bench.data import synthetic
    from bench.data.transforms import test_transform
    from PIL import Image

    model, preprocess, tokenizer = tiny
    spec = synthetic.SPECS["syn_colour"]
    arrays, labels = synthetic.generate(spec, "test")  # the images materialize() writes, kept in memory
    pils = [Image.fromarray(a) for a in arrays]
    transform = test_transform(32)
    images = torch.stack([transform(im) for im in pils])
    # open_clip's own preprocessing gives the same tensors as the harness's test transform
    assert torch.allclose(preprocess(pils[0]), images[0], atol=1e-6)
    text = model.encode_text(tokenizer([spec.template.format(c) for c in spec.classnames]))
    feats = model.encode_image(images)
    logits = torch.nn.functional.normalize(feats, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    acc = (logits.argmax(1) == torch.from_numpy(labels)).float().mean().item()
    assert acc > 0.6, f"zero-shot colour accuracy {acc:.2f} (chance 0.10)"


@pytest.mark.parametrize("lower", [False, True])
def test_text_weights_are_open_clips_classifier_and_equal_the_explicit_computation(tiny, one_thread, lower):
    """TrialContext.text_weights (open_clip's build_zero_shot_classifier) equals, to the bit, per template
    normalise, average over templates, re-normalise, with one batch of every class per template."""
    import types

    import torch.nn.functional as F

    from bench.context import TrialContext
    from bench.data.templates import IMAGENET_TEMPLATES_SELECT

    model, _, tokenizer = tiny
    classnames = ["Red_Car", "green", "Blue_sky", "yellow", "black_and_white"]
    ctx = TrialContext(spec=None, clf=types.SimpleNamespace(model=model), tokenizer=tokenizer,
                       data=types.SimpleNamespace(classnames=classnames, templates=("a photo of a {}.",)),
                       device=torch.device("cpu"), image_size=32)
    names = [c.replace("_", " ") for c in classnames]
    names = [n.lower() for n in names] if lower else names
    for templates in (("a photo of a {}.",), IMAGENET_TEMPLATES_SELECT):
        with torch.no_grad():
            per_template = [F.normalize(model.encode_text(tokenizer([t.format(n) for n in names])).float(), dim=-1)
                            for t in templates]
        explicit = F.normalize(torch.stack(per_template).mean(0), dim=-1)
        got = ctx.text_weights(templates=templates, lower=lower)
        assert got.shape == (len(classnames), explicit.shape[1]) and got.is_contiguous()
        assert torch.equal(got, explicit), templates
    assert torch.equal(ctx.text_weights(lower=lower), ctx.text_weights(classnames, ["a photo of a {}."], lower))


def test_text_weights_batch_whole_classes_beyond_one_pass(tiny, one_thread, monkeypatch):
    import types

    import bench.context
    from bench.context import TrialContext
    from bench.data.templates import IMAGENET_TEMPLATES_SELECT

    model, _, tokenizer = tiny
    data = types.SimpleNamespace(classnames=["red", "green", "blue"], templates=IMAGENET_TEMPLATES_SELECT)
    ctx = TrialContext(spec=None, clf=types.SimpleNamespace(model=model), tokenizer=tokenizer, data=data,
                       device=torch.device("cpu"), image_size=32)
    whole = ctx.text_weights()
    monkeypatch.setattr(bench.context, "PROMPTS_PER_PASS", 14)  # two classes of 7 prompts a pass
    torch.testing.assert_close(ctx.text_weights(), whole, atol=1e-6, rtol=0)
