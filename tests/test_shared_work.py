"""Work shared between trials: stage learners start before the trials that reuse their stage, and
augmented encoder passes are encoded once for every method and trial that asks for them."""
from __future__ import annotations


import torch

from bench.fingerprint import fingerprinted
from bench.spec import TrialSpec
from bench.runner.stage_order import StageOrder, stage_keys
from bench.trial import build_context, seed_everything


def specs(root, cache, stacks, datasets=("fixture",), seeds=(1,)):
    return [fingerprinted(TrialSpec(run="o", suite="t", dataset=d, shots=2, seed=s, stack=stack,
                                    pretrained="none", data_root=str(root), cache_dir=cache))
            for d in datasets for s in seeds for stack in stacks]


def test_no_trial_starts_while_its_stage_is_being_learned(fixture_root, tmp_path):
    plan = specs(fixture_root, str(tmp_path), ["coop+mask", "tip_adapter+mask", "zeroshot", "mask"], seeds=(1, 2))
    order = StageOrder(plan)
    started, running, learnt = [], [], set()
    while not order.finished:
        spec = order.next()
        if spec is None:  # nothing can start: the oldest running trial completes
            done = running.pop(0)
            order.done(done.trial_id)
            learnt.update(stage_keys(done))
            continue
        learning = {k for r in running for k in stage_keys(r)} - learnt
        assert not set(stage_keys(spec)) & learning, f"{spec.stack} would wait on a stage"
        started.append(spec)
        running.append(spec)
    assert sorted(s.trial_id for s in started) == sorted(s.trial_id for s in plan)  # every trial exactly once
    # the cheapest learner of each stage goes first: `mask` before the stacks that reuse its masks
    first = {}
    for s in started:
        first.setdefault(s.seed, s.stack)
    assert first == {1: "mask", 2: "mask"}


def test_without_a_cache_nothing_waits(fixture_root):
    plan = specs(fixture_root, None, ["coop+mask", "mask"])
    order = StageOrder(plan)
    assert order.next() is not None and order.next() is not None and order.finished


def counting_context(root, cache):
    spec = TrialSpec(run="t", suite="t", dataset="fixture", shots=4, seed=1, stack="coop", pretrained="bundled",
                     data_root=str(root), cache_dir=cache)
    seed_everything(1)
    ctx = build_context(fingerprinted(spec))
    calls = []
    encode = ctx.clf.encode
    ctx.clf.encode = lambda x: (calls.append(len(x)), encode(x))[1]
    return ctx, calls


def test_augmented_passes_are_encoded_once_and_equal_fresh_ones(fixture_root, tmp_path):
    cache = str(tmp_path / "cache")
    ctx, calls = counting_context(fixture_root, cache)
    transform = ctx.train_transform((0.08, 1.0))
    two = ctx.features("train", transform, views=2)
    per_pass = len(calls) // 2  # batches per pass
    assert per_pass > 0
    other, other_calls = counting_context(fixture_root, cache)  # another trial (or method) asks for 3 passes
    three = other.features("train", other.train_transform((0.08, 1.0)), views=3)
    assert len(other_calls) == per_pass  # only the third pass is encoded
    assert torch.equal(three[:2], two)
    fresh, _ = counting_context(fixture_root, None)
    assert torch.allclose(fresh.features("train", fresh.train_transform((0.08, 1.0)), views=3), three, atol=1e-6)
    assert not torch.allclose(three[0], three[2])  # passes are independently augmented


def test_test_features_are_shared_across_seeds_unless_the_weights_are_random(fixture_root):
    from bench.trial import encoder_identity

    def ids(pretrained):
        return {encoder_identity(fingerprinted(TrialSpec(run="o", suite="t", dataset="fixture", shots=2, seed=s,
                                                         stack="zeroshot", pretrained=pretrained,
                                                         data_root=str(fixture_root))))
                for s in (1, 2)}

    assert len(ids("bundled")) == 1  # seeds pick other shots, but the encoder is the same weights
    assert len(ids("none")) == 2  # random init is seeded: another seed, another encoder
