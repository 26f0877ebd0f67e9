"""The synthetic suite: deterministic generator, CoOp on-disk layout, safe materialisation."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bench.data import synthetic
from bench.data.catalog import get_dataset


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_render_is_deterministic_and_seed_dependent():
    def draw(seed):
        rng = np.random.default_rng(seed)
        scenes = synthetic.sample_scenes(rng, 64)
        return synthetic.render(scenes, rng), synthetic.caption(scenes, rng)

    a, caps_a = draw(3)
    b, caps_b = draw(3)
    c, _ = draw(4)
    assert a.shape == (64, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and caps_a == caps_b
    assert not np.array_equal(a, c)


def test_render_draws_the_attributes():
    rng = np.random.default_rng(0)
    n = len(synthetic.COLOURS)
    scenes = synthetic.sample_scenes(rng, n, colour=np.arange(n), shape=0, size=2, position=0, count=1, texture=0)
    images = synthetic.render(scenes, rng).astype(int)
    centre = images[:, 14:18, 14:18].reshape(n, -1, 3).mean(1)  # a large circle covers the centre
    expected = np.array(list(synthetic.COLOURS.values()))
    assert np.abs(centre - expected).max() < 25
    corners = images[:, :3, :3].reshape(n, -1, 3).mean(1)  # background stays a muted grey
    assert np.all(corners.max(1) - corners.min(1) < 60)
    # a larger size covers more pixels; outline style covers fewer than filled
    sizes = synthetic.sample_scenes(rng, 3, colour=0, shape=1, size=np.arange(3), position=0, count=1, texture=0)
    red = (synthetic.render(sizes, rng)[..., 0] > 200).sum(axis=(1, 2))
    assert red[0] < red[1] < red[2]
    styles = synthetic.sample_scenes(rng, 2, colour=0, shape=1, size=2, position=0, count=1, texture=0,
                                     style=np.arange(2))
    red = (synthetic.render(styles, rng)[..., 0] > 200).sum(axis=(1, 2))
    assert red[1] < 0.7 * red[0]
    # the warm light casts blue objects towards dark, grey-ish tones
    blue = synthetic.COLOUR_NAMES.index("blue")
    lights = synthetic.sample_scenes(rng, 2, colour=blue, shape=0, size=2, position=0, count=1, texture=0,
                                     light=np.arange(2))
    centre = synthetic.render(lights, rng)[:, 14:18, 14:18].reshape(2, -1, 3).mean(1)
    assert centre[0, 2] > 200 and centre[1, 2] < 120


def test_captions_name_attributes_and_never_the_novel_words():
    rng = np.random.default_rng(1)
    scenes = synthetic.sample_scenes(rng, 2000)
    caps = synthetic.caption(scenes, rng)
    words = {w.strip(".") for c in caps for w in c.split()}
    assert set(synthetic.COLOUR_NAMES) <= words and set(synthetic.TEXTURES) <= words
    for name in ("syn_novel", "syn_noveltexture"):
        assert set(synthetic.SPECS[name].classnames).isdisjoint(words)
    mentioned = [synthetic.SHAPES[s] in c or "object" in c or "shape" in c for s, c in zip(scenes.shape, caps)]
    assert all(mentioned)


def test_suite_shape():
    specs = synthetic.SPECS
    assert len(specs) >= 6
    for name, spec in specs.items():
        assert name.startswith("syn_") and name == name.lower()
        assert 4 <= len(spec.classnames) <= 50 and len(set(spec.classnames)) == len(spec.classnames)
        assert spec.train >= 16 and spec.val >= 4
        assert len(spec.classnames) * spec.test <= 1000
        ds = get_dataset(name)
        assert isinstance(ds, synthetic.GeneratedDataset) and ds.split_file == spec.split_file and "{}" in ds.template


def test_materialize_layout_and_split_file(tmp_path):
    folder = synthetic.materialize("syn_noveltexture", tmp_path)
    spec = synthetic.SPECS["syn_noveltexture"]
    assert folder == tmp_path / "syn_noveltexture"
    assert spec.split_file == "split_zhou_SynNoveltexture.json"
    raw = json.loads((folder / spec.split_file).read_text())
    assert set(raw) == {"train", "val", "test"}
    for split, per_class in (("train", spec.train), ("val", spec.val), ("test", spec.test)):
        entries = raw[split]
        assert len(entries) == per_class * len(spec.classnames)
        for rel, label, classname in entries:
            assert not os.path.isabs(rel) and (folder / "images" / rel).is_file()
            assert spec.classnames[label] == classname and rel.startswith(classname + "/")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    # the harness's own loader reads it (data root holding the folder)
    splits = get_dataset("syn_noveltexture").read(tmp_path)
    assert splits.classnames == list(spec.classnames)
    assert len(splits.test) == spec.test * len(spec.classnames)
    from PIL import Image

    with Image.open(splits.train[0].path) as im:
        assert im.size == (32, 32) and im.mode == "RGB"


def test_regeneration_is_byte_identical_and_cached(tmp_path):
    a = synthetic.materialize("syn_novel", tmp_path / "a")
    b = synthetic.materialize("syn_novel", tmp_path / "b")
    files_a = _files(a)
    assert len(files_a) > 100 and files_a == _files(b)
    # a complete folder is reused as it is, a stale one (other generator version) is rebuilt
    marker = a / "images" / "keep.txt"
    marker.write_text("x")
    assert synthetic.materialize("syn_novel", tmp_path / "a") == a and marker.exists()
    (a / ".bench-synthetic.json").write_text(json.dumps({"version": -1}))
    assert synthetic.materialize("syn_novel", tmp_path / "a") == a
    assert not marker.exists() and _files(a) == files_a


def test_default_root_follows_bench_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    assert synthetic.default_root() == tmp_path / "cache" / "synthetic"
    folder = synthetic.materialize("syn_noveltexture")
    assert folder == tmp_path / "cache" / "synthetic" / "syn_noveltexture"
    # with no data root, the catalog generates synthetic datasets into the cache
    assert get_dataset("syn_noveltexture").locate(None) == folder


def test_concurrent_materialize_keeps_one_complete_copy(tmp_path, monkeypatch):
    # simulate losing the race: another process renames its copy in while we are building
    real_build = synthetic._build

    def build_then_lose(spec, folder):
        real_build(spec, folder)
        other = folder.parent / spec.folder
        if not other.exists():
            real_build(spec, other)
            (other / "images" / "winner.txt").write_text("first")

    monkeypatch.setattr(synthetic, "_build", build_then_lose)
    folder = synthetic.materialize("syn_noveltexture", tmp_path)
    assert (folder / "images" / "winner.txt").exists()  # the winner's copy is kept, ours discarded
    assert [p.name for p in tmp_path.iterdir()] == ["syn_noveltexture"]


def test_unknown_dataset_is_a_key_error():
    with pytest.raises(KeyError):
        synthetic.materialize("syn_nope", Path("/nonexistent"))
