"""Inference speed as a measured column: every trial times its final classifier's real forward over the
test split; masks baked into the encoder cost nothing at inference (R-AMT's equal-FPS claim)."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch.overrides import TorchFunctionMode

from bench.methods._masking import apply_masks, masked_forward, select_masked
from bench.plan import CPU_INFER_IMAGES
from bench.spec import TrialSpec
from bench.trial import build_context
from bench.evaluation import measure_throughput


@pytest.fixture(scope="module")
def ctx(fixture_root):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = TrialSpec(run="t", suite="t", dataset="fixture", shots=2, seed=1, stack="zeroshot", model="tiny",
                     pretrained="none", data_root=str(fixture_root))
    yield build_context(spec)
    torch.set_num_threads(threads)


def with_classifier(ctx, clf):
    return dataclasses.replace(ctx, clf=clf, _features={})


def baked(ctx):
    """A copy of the classifier with random binary masks (2 % off) baked into its encoder, as mask does."""
    clf = copy.deepcopy(ctx.clf)
    visual = clf.model.visual
    params = dict(visual.named_parameters())
    gen = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(params[n].shape, generator=gen) > 0.02 for n in select_masked(visual, False, "all", True)}
    apply_masks(visual, masks)
    return clf, masks


class RunTimeMasks(torch.nn.Module):
    """The regression the claim rules out: an encoder that applies its masks at every forward."""

    def __init__(self, visual, masks):
        super().__init__()
        self.visual = visual
        self.scores = {n: torch.where(m, 1e-2, 0.0) for n, m in masks.items()}

    def forward(self, images):
        return masked_forward(self.visual, self.scores, 5e-3, images)


class Calls(TorchFunctionMode):
    """The torch functions a forward calls, in order: the work it does, independent of the clock."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def calls(clf, images) -> list[str]:
    with torch.no_grad(), Calls() as mode:
        clf(images)
    return mode.names


def test_throughput_times_the_real_forward_without_the_warm_up_batch(ctx):
    from bench import evaluation

    evaluation._WARMED.clear()  # a fresh process
    counted = []
    clf = copy.deepcopy(ctx.clf)
    clf.register_forward_hook(lambda module, args, out: counted.append(len(args[0])))
    out = measure_throughput(with_classifier(ctx, clf), batch_size=8, max_images=12)
    assert out["infer_images"] == 12 and out["infer_batch_size"] == 8 and out["infer_images_per_s"] > 0
    assert counted == [8, 8, 4]  # warm-up batch, then 12 timed images
    counted.clear()
    again = measure_throughput(with_classifier(ctx, clf), batch_size=8, max_images=12)  # the next trial
    assert counted == [8, 4] and again["infer_images"] == 12  # warm already: every forward is timed
    counted.clear()
    whole = measure_throughput(with_classifier(ctx, clf), batch_size=100)  # the split fits one batch
    assert whole["infer_images"] == len(ctx.split("test")) == counted[1] and len(counted) == 2


def test_baked_masks_do_the_same_work_and_infer_as_fast_as_the_base(ctx):
    masked_clf, masks = baked(ctx)
    images, _ = next(iter(ctx.loader("test", batch_size=8)))
    assert calls(masked_clf, images) == calls(ctx.clf, images)  # the same operations, nothing added
    run_time = copy.deepcopy(ctx.clf)
    run_time.model.visual = RunTimeMasks(run_time.model.visual, masks)
    assert calls(run_time, images) != calls(ctx.clf, images)  # what the check above would catch
    assert torch.allclose(run_time(images), masked_clf(images), atol=1e-5)  # the same classifier otherwise

    # The speed itself, as a ratio in one process: interleaved rounds, the best of each (the machine's load
    # only ever slows a round down). Loose enough for a shared CPU; the operation check above is exact.
    base_ctx, masked_ctx = ctx, with_classifier(ctx, masked_clf)
    best = {"base": 0.0, "masked": 0.0}
    for _ in range(5):
        for name, c in (("base", base_ctx), ("masked", masked_ctx)):
            best[name] = max(best[name], measure_throughput(c, batch_size=10)["infer_images_per_s"])
    assert 0.5 < best["masked"] / best["base"] < 2.0, best


def test_every_stack_records_its_throughput_and_the_option_turns_it_off(tmp_path, fixture_root):
    from bench.trial import execute_trial
    from bench.plan import plan_trials
    from bench.results import RunFolder
    from bench.suite import Suite

    fast = {"mask": {"steps": 1}, "coop": {"epochs": 1, "feature_views": 1},
            "clip_adapter": {"epochs": 1, "views": 1}, "tip_adapter_f": {"epochs": 1},
            "linear_probe": {"search_steps": 1}}
    stacks = ["zeroshot", "linear_probe", "clip_adapter", "tip_adapter_f+mask", "coop+mask"]
    suite = Suite(name="t", description="", datasets=["fixture"], shots=[2], seeds=[1], methods=stacks,
                  pretrained="none", device="cpu", set=fast)
    specs = plan_trials(suite, run="s", results=str(tmp_path), data_root=str(fixture_root))
    assert {s.infer_images for s in specs} == {CPU_INFER_IMAGES}  # cpu default: a prefix of the test split
    off = plan_trials(suite, run="s", results=str(tmp_path), data_root=str(fixture_root), infer_images=0)
    assert [s.trial_id for s in off] == [s.trial_id for s in specs]  # the measurement changes no result
    RunFolder(tmp_path, "s").ensure()
    for spec in specs:
        assert execute_trial(spec)["status"] == "ok"
    rows = RunFolder(tmp_path, "s").read()
    assert set(rows["stack"]) == set(stacks)
    assert rows["infer_images_per_s"].gt(0).all() and (rows["infer_images"] == rows["n_test"]).all()
    assert rows["infer_batch_size"].eq(100).all() and rows["device"].eq("cpu").all()
    from bench.trial import run_trial

    assert "infer_images_per_s" not in run_trial(off[0])


def test_the_speed_figure_plots_accuracy_against_throughput():
    import pandas as pd

    from bench.report.figures import report_figures, speed_points

    rows = pd.DataFrame([
        {"stack": s, "label": s, "dataset": d, "shots": 16, "seed": 1, "status": "ok", "top1": acc + i,
         "infer_images_per_s": fps, "infer_batch_size": 100, "device": "cuda", "protocol": "fewshot",
         "suite": "x", "trial_id": f"{s}{d}"}
        for s, acc, fps in (("coop", 70.0, 7.45), ("tip_adapter", 71.0, 51.81), ("mask", 73.0, 62.11))
        for i, d in enumerate(("dtd", "eurosat"))])
    points, about = speed_points(rows)
    assert dict(zip(points.label, points.images_per_s)) == {"coop": 7.45, "tip_adapter": 51.81, "mask": 62.11}
    assert dict(zip(points.label, points.accuracy))["mask"] == pytest.approx(73.5)
    assert about["device"] == "cuda" and about["shots"] == 16
    assert "speed" in report_figures(rows)
    assert "speed" not in report_figures(rows.assign(infer_images_per_s=float("nan")))
