"""Kept predictions and the paired bootstrap: predictions aligned with the split and written before the row;
intervals that contain the estimate, narrow with more images, reproduce with their seed, and cover 0 for
identical stacks; gain cells in the report read ``+10.3 [+8.1, +12.6]``."""
from __future__ import annotations

import re

import numpy as np
import pytest

from bench.cli import main
from bench.data.catalog import load_fewshot
from bench.trial import execute_trial
from bench.fingerprint import fingerprinted
from bench.report.intervals import PredictionScores, bootstrap, gain_intervals, replicates
from bench.report.tables import accuracy_tables, gain_rows, load_rows
from bench.results import RunFolder
from bench.spec import TrialSpec

from fake_runs import write_fake_run


def paired_gain(correct_a, correct_b, seed: int = 0):
    """Interval of acc(A) - acc(B) (points) from both stacks' per-image correctness [seeds, images]."""
    return bootstrap(np.asarray(correct_a, float) - np.asarray(correct_b, float), seed=seed)


def correct(n: int, acc: float, seed: int, seeds: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((seeds, n)) < acc


# -- the bootstrap -----------------------------------------------------------------------------------
def test_interval_contains_the_estimate_and_narrows_with_more_images():
    small = paired_gain(correct(200, 0.7, 1), correct(200, 0.6, 2), seed=5)
    large = paired_gain(correct(5000, 0.7, 1), correct(5000, 0.6, 2), seed=5)
    for ci in (small, large):
        assert ci.low < ci.estimate < ci.high
    assert (large.high - large.low) < 0.4 * (small.high - small.low)  # ~ 1/sqrt(25) = 0.2
    assert large.excludes_zero and 5 < large.estimate < 15


def test_interval_is_exactly_reproducible_with_its_seed():
    a, b = correct(300, 0.7, 1, seeds=3), correct(300, 0.65, 2, seeds=3)
    assert paired_gain(a, b, seed=11) == paired_gain(a, b, seed=11)
    assert paired_gain(a, b, seed=11) != paired_gain(a, b, seed=12)


def test_identical_stacks_give_zero_and_swapping_them_negates_the_interval():
    a, b = correct(300, 0.7, 1, seeds=2), correct(300, 0.6, 2, seeds=2)
    same = paired_gain(a, a.copy(), seed=3)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero
    ab, ba = paired_gain(a, b, seed=3), paired_gain(b, a, seed=3)
    assert ab.low == pytest.approx(-ba.high) and ab.high == pytest.approx(-ba.low)


def test_pairing_makes_a_small_consistent_gain_real():
    """B gets 4 % more images right than A, and never one A gets: paired, that is far from 0."""
    base = correct(400, 0.6, 1)[0]
    better = base.copy()
    better[np.flatnonzero(~base)[:16]] = True
    ci = paired_gain(better[None], base[None], seed=0)
    assert ci.estimate == pytest.approx(4.0) and ci.low > 1.5


def test_seeds_that_disagree_widen_the_interval():
    images = np.random.default_rng(0).random(400)
    steady = np.stack([images < 0.6] * 3)
    moving = np.stack([images < 0.45, images < 0.6, images < 0.75])
    one, three = bootstrap(steady, seed=1), bootstrap(moving, seed=1)
    assert abs(three.estimate - one.estimate) < 1.0
    assert (three.high - three.low) > 2 * (one.high - one.low)


def test_about_95_percent_of_intervals_cover_the_true_gain():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):
        a, b = rng.random((1, 250)) < 0.7, rng.random((1, 250)) < 0.6
        reps = replicates(a.astype(float) - b, 400, np.random.default_rng(trial))
        low, high = np.quantile(reps, [0.025, 0.975])
        covered += low <= 10.0 <= high
    assert 0.89 <= covered / 200 <= 0.99


# -- kept predictions --------------------------------------------------------------------------------
def test_a_trial_keeps_its_test_predictions_aligned_with_the_split_before_its_row(fixture_root, tmp_path,
                                                                                  monkeypatch):
    spec = fingerprinted(TrialSpec(run="p", suite="t", dataset="fixture", shots=2, seed=1, stack="zeroshot",
                                   pretrained="none", data_root=str(fixture_root), results=str(tmp_path)))
    folder = RunFolder(tmp_path, "p")
    folder.ensure()
    write_row = RunFolder.write_row

    def row_after_predictions(self, row):
        assert self.read_predictions(row["trial_id"]) is not None, "row written before its predictions"
        write_row(self, row)

    monkeypatch.setattr(RunFolder, "write_row", row_after_predictions)
    row = execute_trial(spec)
    assert row["status"] == "ok"
    kept = folder.read_predictions(spec.trial_id)
    test = load_fewshot("fixture", str(fixture_root), 2, 1)[0].test
    assert list(kept.columns) == ["eval_set", "index", "label", "predicted"]
    assert set(kept.eval_set) == {"test"} and kept["index"].tolist() == list(range(len(test)))
    assert kept["label"].tolist() == [d.label for d in test]
    assert 100.0 * (kept.predicted == kept.label).mean() == pytest.approx(row["top1"])
    assert folder.read_predictions("no-such-trial") is None


# -- gain rows of a report ---------------------------------------------------------------------------
def test_gain_rows_get_paired_intervals_that_match_the_table(tmp_path):
    folder = write_fake_run(tmp_path)
    rows = load_rows(str(tmp_path), "demo")
    mean, _ = accuracy_tables(rows, 4)[4]
    gains = gain_rows(mean)
    ok = rows[rows.status == "ok"]
    ci = gain_intervals(ok, gains, PredictionScores(folder.read_predictions))
    assert list(ci.index) == list(gains.index) and list(ci.columns) == list(gains.columns)
    for name in gains.index:
        for column in gains.columns:
            cell = ci.at[name, column]
            assert cell.estimate == pytest.approx(gains.at[name, column])
            assert cell.low <= cell.estimate <= cell.high
    assert ci.at["coop+mask vs coop", "Average"].excludes_zero


def test_rows_without_predictions_keep_plain_gain_cells(tmp_path):
    write_fake_run(tmp_path)
    rows = load_rows(str(tmp_path), "demo")
    mean, _ = accuracy_tables(rows, 4)[4]
    ok = rows[rows.status == "ok"]
    ci = gain_intervals(ok, gain_rows(mean), PredictionScores(lambda trial_id: None))
    assert ci.isna().all().all()


def test_markdown_gain_cells_read_estimate_and_interval(tmp_path, capsys):
    write_fake_run(tmp_path)
    assert main(["report", "--results", str(tmp_path), "--run", "demo", "--format", "markdown"]) == 0
    text = capsys.readouterr().out
    assert "gains [95% paired-bootstrap interval], * = excludes 0" in text
    line = next(l for l in text.splitlines() if l.startswith("| coop+mask vs coop |"))
    cells = [c.strip() for c in line.strip("|").split("|")][1:]
    for cell in cells:
        assert re.fullmatch(r"[+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]\*?", cell), cell
    assert main(["report", "--results", str(tmp_path), "--run", "demo", "--format", "markdown", "--std"]) == 0
    assert " ± " in capsys.readouterr().out


def test_a_shift_tables_average_interval_spans_the_targets_as_its_value_does(tmp_path):
    """Domain shift: the Average is over the target datasets only, and so is its interval."""
    import json

    import torch

    from bench.evaluation import Predictions
    from bench.report.tables import protocol_tables, table_rows
    from bench.results import RunFolder

    folder = RunFolder(tmp_path, "shift")
    folder.ensure()
    labels = np.arange(200) % 4
    accuracy = {"zeroshot": {"src": 0.3, "t1": 0.5, "t2": 0.6}, "coop": {"src": 0.9, "t1": 0.55, "t2": 0.7}}
    for seed in (1, 2):
        images = np.random.default_rng(seed).random(200)
        for stack, accs in accuracy.items():
            kept, top1 = Predictions(), {}
            for dataset, acc in accs.items():
                correct = images < acc
                kept.keeper("test" if dataset == "src" else dataset)(
                    torch.as_tensor(labels), torch.as_tensor(np.where(correct, labels, (labels + 1) % 4)))
                top1[dataset] = 100.0 * correct.mean()
            trial_id = f"{stack}-{seed}"
            folder.write_predictions(trial_id, kept.table())
            folder.write_row({"trial_id": trial_id, "run": "shift", "suite": "s", "stack": stack, "dataset": "src",
                              "shots": 16, "seed": seed, "status": "ok", "top1": top1["src"], "n_test": 200,
                              "model": "tiny", "pretrained": "bundled", "protocol": "shift",
                              "extras": json.dumps({"top1.t1": top1["t1"], "top1.t2": top1["t2"]})})
    rows, _ = table_rows(folder.read())
    mean, _ = protocol_tables(rows, 16)[16]
    assert mean.at["coop", "Average"] == pytest.approx(mean.loc["coop", ["t1", "t2"]].mean())
    gains = gain_rows(mean)
    ci = gain_intervals(rows, gains, PredictionScores(folder.read_predictions))
    cell = ci.at["coop vs zeroshot", "Average"]
    assert cell.estimate == pytest.approx(gains.at["coop vs zeroshot", "Average"])
    assert cell.low <= cell.estimate <= cell.high
