"""The run's precision is in every row, the trial id (when not fp32) and the cache keys; the cost ledger
counts a trial's encoder work."""
from __future__ import annotations

import dataclasses
import json

import pytest

from bench.errors import BenchError
from bench.fingerprint import fingerprinted
from bench.spec import TrialSpec
from bench.trial import run_trial


def spec(root, stack="zeroshot", **kw) -> TrialSpec:
    return fingerprinted(TrialSpec(run="r", suite="t", dataset="fixture", shots=2, seed=1, stack=stack,
                                   data_root=str(root), infer_images=0, **kw))


def test_precision_is_in_the_id_and_stage_key_only_when_not_fp32(fixture_root):
    fp32 = spec(fixture_root, "mask")
    ids = {p: dataclasses.replace(fp32, precision=p).trial_id for p in ("fp32", "tf32", "bf16")}
    assert len(set(ids.values())) == 3
    assert ids["fp32"] == fp32.trial_id and fp32.precision_key() == {}  # ids made before the option stay
    assert dataclasses.replace(fp32, precision="bf16").stage_key(0) != fp32.stage_key(0)


def test_a_bad_precision_is_one_line_at_planning(tmp_path):
    from bench.plan import plan_trials
    from bench.suite import load_suite

    with pytest.raises(BenchError, match="--precision must be one of fp32, tf32, bf16"):
        plan_trials(load_suite("synthetic"), run="r", results=str(tmp_path), methods=["zeroshot"],
                    datasets=["syn_colour"], precision="fp16")


def test_bf16_rows_record_it_and_stay_close_to_fp32(fixture_root, one_thread):
    from bench.rows import spec_fields

    specs = {p: spec(fixture_root, "zeroshot", pretrained="bundled", precision=p) for p in ("fp32", "bf16")}
    rows = {p: run_trial(s) for p, s in specs.items()}
    assert spec_fields(specs["bf16"])["precision"] == "bf16"  # the row's column
    assert json.loads(rows["bf16"]["cost"])["precision"] == "bf16"
    assert abs(rows["bf16"]["top1"] - rows["fp32"]["top1"]) <= 10.0  # 2 of 20 test images at most


def test_the_ledger_counts_a_trials_encoder_work(fixture_root, one_thread):
    n_train, n_val, n_test = 8, 8, 20  # the fixture: 4 classes, 2 shots, val min(K, 4), 5 test images a class
    zeroshot = run_trial(spec(fixture_root))
    assert json.loads(zeroshot["cost"])["forward"] == {"features": n_val + n_test}
    assert zeroshot["images_decoded"] == n_val + n_test and zeroshot["encoder_backward"] == 0
    per_image = json.loads(zeroshot["cost"])["gflops_per_image"]
    assert per_image > 0 and zeroshot["encoder_gflops"] == pytest.approx(per_image * (n_val + n_test))

    steps, batch = 3, 8
    mask = run_trial(spec(fixture_root, "mask", overrides={"mask": {"steps": steps, "batch_size": batch}}))
    cost = json.loads(mask["cost"])
    assert cost["forward"] == {"train": steps * batch, "teacher": steps * batch, "features": n_val + n_test}
    assert cost["backward"] == {"train": 2 * steps * batch}  # GDR: the KL and the task gradients
    assert mask["images_decoded"] == n_train + n_val + n_test  # the train images once for every step
    assert mask["encoder_gflops"] == pytest.approx(per_image * (2 * steps * batch + n_val + n_test
                                                                + 2 * 2 * steps * batch))


@pytest.mark.parametrize("stack, sets", [
    ("linear_probe", {}),
    ("coop+mask", {"coop": {"epochs": 2, "batch_size": 4}, "mask": {"steps": 2, "batch_size": 8}}),
    ("clip_adapter", {"clip_adapter": {"epochs": 3}}),
    ("tip_adapter_f", {"tip_adapter_f": {"epochs": 2, "augment_views": 2, "search_step": [4, 4]}}),
])
def test_the_planned_work_is_what_the_ledger_counts(fixture_root, one_thread, stack, sets):
    from bench.cost import Sizes, plan_trial

    trial = spec(fixture_root, stack, overrides=sets)
    planned, decoded = plan_trial(trial, Sizes(train=8, val=8, test=20))
    row = run_trial(trial)
    cost = json.loads(row["cost"])
    assert (cost["forward"], cost["backward"]) == (dict(planned.forwards), dict(planned.backwards))
    assert row["images_decoded"] == decoded
