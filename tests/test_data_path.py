"""The image path: batches do not depend on the number of loader workers and equal the single-process
transform's; /dev/shm too small is one line before any trial; the cache is listed and pruned, never an
entry in use."""
from __future__ import annotations

import os
import time

import pytest
import torch
from torch.utils.data import DataLoader

from bench.context import ImageList
from bench.errors import BenchError
from bench.fingerprint import fingerprinted
from bench.spec import TrialSpec
from bench.trial import build_context, seed_everything


def context(root, workers: int):
    spec = TrialSpec(run="t", suite="t", dataset="fixture", shots=4, seed=1, stack="coop", pretrained="none",
                     data_root=str(root))
    seed_everything(1)
    ctx = build_context(fingerprinted(spec))
    ctx.num_workers = workers
    return ctx


def two_epochs(ctx) -> list[torch.Tensor]:
    torch.manual_seed(5)
    loader = ctx.loader("train", ctx.train_transform((0.08, 1.0)), batch_size=5, shuffle=True,
                        generator=ctx.generator(11))
    return [torch.cat([images, labels.view(-1, 1, 1, 1).expand(-1, 3, 1, images.shape[-1]).float()], 2)
            for _ in range(2) for images, labels in loader]


def test_batches_are_the_same_with_any_number_of_workers(fixture_root, one_thread):
    reference = two_epochs(context(fixture_root, 0))
    for workers in (1, 2):
        batches = two_epochs(context(fixture_root, workers))
        assert len(batches) == len(reference)
        assert all(torch.equal(a, b) for a, b in zip(batches, reference)), f"{workers} workers differ"
    assert not torch.equal(reference[0], reference[len(reference) // 2])  # epochs are augmented anew


def test_batches_equal_the_transform_called_in_one_process(fixture_root, one_thread):
    """The draws made in the main process are the transform's own: results made before are unchanged."""
    ctx = context(fixture_root, 2)
    transform = ctx.train_transform((0.08, 1.0))
    torch.manual_seed(5)
    old = DataLoader(ImageList(ctx.split("train"), transform), batch_size=5, shuffle=True,
                     generator=ctx.generator(11))
    expected = [images for _ in range(2) for images, _ in old]
    torch.manual_seed(5)
    new = ctx.loader("train", transform, batch_size=5, shuffle=True, generator=ctx.generator(11))
    got = [images for _ in range(2) for images, _ in new]
    assert all(torch.equal(a, b) for a, b in zip(got, expected)) and len(got) == len(expected)
    assert ctx.images.decoded == len(ctx.split("train"))  # each few-shot image decoded once for both epochs


def test_a_small_dev_shm_is_one_line_naming_the_fix(fixture_root):
    from bench.loading import check_shm

    spec = TrialSpec(run="t", suite="t", dataset="fixture", shots=4, seed=1, stack="coop", model="ViT-B-16",
                     pretrained="openai", data_root=str(fixture_root), device="cuda")  # 224 px crops
    with pytest.raises(BenchError) as err:
        check_shm([spec], cpus_per_trial=8, free=64 * 2**20)  # a container's default 64 MB
    assert "--shm-size" in str(err.value) and "--ipc=host" in str(err.value) and "\n" not in str(err.value)
    check_shm([spec], cpus_per_trial=8, free=2 * 2**30)  # 2 GB holds 7 workers' prefetched batches
    check_shm([spec], cpus_per_trial=1, free=64 * 2**20)  # no workers, nothing through /dev/shm
    check_shm([TrialSpec(**{**spec.to_dict(), "device": "cpu"})], cpus_per_trial=8, free=0)




def test_cache_lists_by_kind_and_prunes_by_age_and_run_but_never_an_entry_in_use(tmp_path):
    from bench.cache import FeatureCache, StageCache, entries, key_lock, prune

    features = FeatureCache(tmp_path, run="old")
    for key in ("a" * 32, "b" * 32):
        features.put(key, torch.zeros(3, 4))
    StageCache(tmp_path, run="new").publish("c" * 32, lambda tmp: (tmp / "row.json").write_text("{}"))
    FeatureCache(tmp_path, run="new").put("d" * 32, torch.zeros(2))
    assert sorted(k for k, *_ in entries(tmp_path)) == ["features"] * 3 + ["stages"]
    week_ago = time.time() - 7 * 86400
    os.utime(features.path("a" * 32), (week_ago, week_ago))
    os.utime(features.path("b" * 32), (week_ago, week_ago))
    with key_lock(features.path("b" * 32)):  # a trial is reading it
        deleted, freed, busy = prune(tmp_path, older_than_s=86400)
    assert (deleted, busy) == (1, 1) and freed > 0
    assert not features.path("a" * 32).exists() and features.path("b" * 32).exists()
    assert prune(tmp_path, run="new")[0] == 2  # the stage and the feature file only "new" used
    assert [p.name for _, p, *_ in entries(tmp_path)] == [f"{'b' * 32}.safetensors"]


def test_a_test_split_is_decoded_once_for_every_pass_of_every_trial(fixture_root, tmp_path, one_thread):
    """bench.loading.TestCrops: the first whole pass over the test split stores its uint8 crops; every later
    pass (another encoder after a stage, the inference timing, another trial) decodes nothing and gets the
    same batches bit for bit."""
    import dataclasses

    from bench.cache import FeatureCache, entries

    def test_batches(ctx):
        return [(images, labels) for images, labels in ctx.loader("test", batch_size=7)]

    reference = context(fixture_root, 0)
    n_test = len(reference.split("test"))
    expected = test_batches(reference)  # no cache folder: kept in the trial's memory
    assert reference.other_images.decoded == n_test
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(test_batches(reference), expected))
    assert reference.other_images.decoded == n_test  # the second pass decoded nothing

    ctx = context(fixture_root, 0)
    ctx.cache = FeatureCache(tmp_path, "r")
    first = ctx.features("test")
    assert ctx.other_images.decoded == n_test
    ctx.encoder_id = "after a mask stage"  # a new encoder: the split is encoded again, from the stored crops
    again = ctx.features("test")
    assert ctx.other_images.decoded == n_test and torch.equal(first, again)
    assert [kind for kind, *_ in entries(tmp_path)].count("crops") == 1

    other = context(fixture_root, 2)  # another trial (with workers) reading the same cache folder
    other.cache = FeatureCache(tmp_path, "r")
    got = test_batches(other)
    assert other.other_images.decoded == 0
    assert len(got) == len(expected) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                             for a, b in zip(got, expected))
    shifted = dataclasses.replace(other.data, test=other.data.test[:-1])  # other items: other crops
    other.switch_data(shifted)
    test_batches(other)
    assert other.other_images.decoded == n_test - 1


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
def test_the_test_transform_is_open_clips_preprocess_bit_for_bit(mode):
    """from_preprocess takes open_clip's eval preprocess apart for the uint8 loader: the crop in a worker,
    then normalise on the device, give open_clip's floats exactly (every resize mode open_clip has)."""
    import numpy as np
    import open_clip
    from PIL import Image

    from bench.data.transforms import from_preprocess, normalise, test_transform

    preprocess = open_clip.image_transform(32, is_train=False, resize_mode=mode)
    transform = from_preprocess(preprocess)
    for shape in ((37, 50, 3), (50, 37, 3)):
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8))
        crop = transform.to_uint8(image, ())
        assert crop.dtype == torch.uint8
        assert torch.equal(normalise(crop[None], transform.mean, transform.std)[0], preprocess(image))
    if mode == "shortest":  # CLIP's: the very steps the harness built before (cache keys unchanged)
        assert repr(transform) == repr(test_transform(32))
    with pytest.raises(ValueError, match="not an open_clip eval preprocess"):
        from_preprocess(open_clip.image_transform(32, is_train=False).transforms[0])


def test_a_trial_tests_through_its_models_preprocess(fixture_root):
    ctx = context(fixture_root, 0)
    assert ctx.preprocess is not None
    assert ctx.test_transform().geometric == ctx.preprocess.transforms[:2]
    assert ctx._test_key() == ("test", ctx.image_size, ctx.mean, ctx.std)  # feature keys as before


def test_batches_split_among_workers_are_joined_bit_for_bit(fixture_root, one_thread, monkeypatch):
    """A batch cropped in parts by several workers (bench.loading.DrawnBatches) is the same batch."""
    import bench.loading

    reference = two_epochs(context(fixture_root, 0))
    monkeypatch.setattr(bench.loading, "MIN_CHUNK", 2)  # batches of 5: parts of 2 and 3
    batches = two_epochs(context(fixture_root, 2))
    assert len(batches) == len(reference) and all(torch.equal(a, b) for a, b in zip(batches, reference))
