"""The real-benchmark path on small fixtures in each dataset's exact layout: fewshot11 end to end,
base-to-new, ImageNet domain shift, and the comparison with published numbers."""
from __future__ import annotations

import subprocess
import sys

import pytest

from bench import BenchError
from bench.models import TINY_WEIGHTS
from bench.results import RunFolder
from bench.spec import TrialSpec
from bench.trial import run_trial
from test_real_datasets import (IMAGENET_CLASSES, JSON_FIXTURES, _json_dataset, _write_aircraft, _write_cars,
                                _write_imagenet, _write_v2, _write_wnid_variant)

FAST = {"mask": {"epochs": "1"}, "coop": {"epochs": "1"}, "cocoop": {"epochs": "1"}}


@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    for name in ("dtd", "eurosat", "caltech101"):
        folder, image_dir, split_file, classes = JSON_FIXTURES[name]
        _json_dataset(root, folder, image_dir, split_file, classes)
    _write_cars(root)
    _write_aircraft(root)
    _write_imagenet(root)
    _write_v2(root)
    wnids = list(IMAGENET_CLASSES)
    _write_wnid_variant(root, "imagenet-sketch", "images", wnids)
    _write_wnid_variant(root, "imagenet-adversarial", "imagenet-a", wnids[:2])
    _write_wnid_variant(root, "imagenet-rendition", "imagenet-r", wnids[1:3])
    return root


def test_fewshot11_runs_end_to_end_on_fixtures(real_root, tmp_path):
    cmd = [sys.executable, "-m", "bench.cli", "run", "--suite", "fewshot11", "--model", "tiny", "--pretrained",
           str(TINY_WEIGHTS), "--data-root", str(real_root), "--datasets",
           "dtd,eurosat,stanford_cars,fgvc_aircraft,imagenet", "--methods", "zeroshot,mask,coop+mask", "--shots", "2",
           "--seeds", "1", "--device", "cpu", "--set", "mask.epochs=1", "--set", "coop.epochs=1", "--results",
           str(tmp_path), "--run", "fx"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = RunFolder(tmp_path, "fx").read()
    assert len(rows) == 15 and set(rows.status) == {"ok"}
    masked = rows[rows["stack"] != "zeroshot"]
    assert masked.mask_sparsity.notna().all() and rows[rows["stack"] == "zeroshot"].mask_sparsity.isna().all()
    assert "2-shot top-1" in proc.stdout


def spec(stack: str, dataset: str, root, **kw) -> TrialSpec:
    return TrialSpec(run="r", suite="t", dataset=dataset, shots=2, seed=1, stack=stack, pretrained="none",
                     data_root=str(root), overrides={m: v for m, v in FAST.items() if m in stack.split("+")}, **kw)


@pytest.mark.parametrize("stack", ["zeroshot", "mask", "coop+mask", "cocoop"])
def test_base_to_new_reports_base_new_and_harmonic_mean(real_root, stack):
    row = run_trial(spec(stack, "caltech101", real_root, protocol="base2new"))
    assert row["n_test"] == 2 * 3  # base = first ceil(3/2) = 2 classes, 3 test images each
    base, new = row["top1"], row["top1_new"]
    assert 0 <= new <= 100
    expected = 2 * base * new / (base + new) if base + new else 0.0
    assert row["hm"] == pytest.approx(expected)


def test_base_to_new_rejects_heads_that_cannot_name_new_classes(real_root):
    with pytest.raises(BenchError, match="cannot classify classes it was not trained on"):
        run_trial(spec("tip_adapter", "caltech101", real_root, protocol="base2new"))


def test_domain_shift_scores_each_variant_over_its_own_classes(real_root):
    import json

    targets = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
    row = run_trial(spec("linear_probe", "imagenet", real_root, protocol="shift", shift_targets=targets))
    shifted = {k: v for k, v in json.loads(row["extras"]).items() if k.startswith("top1.")}
    assert sorted(shifted) == sorted(f"top1.{t}" for t in targets)
    assert all(0 <= v <= 100 for v in shifted.values())


def test_report_compare_paper_shows_the_published_r_amt_row(tmp_path, capsys):
    from bench.cli import main
    from bench.suite import load_suite

    folder = RunFolder(tmp_path, "paper")
    folder.ensure()
    for i, dataset in enumerate(load_suite("fewshot11").datasets):
        folder.write_row({"trial_id": f"t{i}", "run": "paper", "suite": "fewshot11", "stack": "mask",
                          "dataset": dataset, "shots": 16, "seed": 1, "top1": 80.0, "status": "ok",
                          "model": "ViT-B-16", "pretrained": "openai", "protocol": "fewshot", "settings": "{}"})
    assert main(["report", "--results", str(tmp_path), "--run", "paper", "--compare", "paper",
                 "--format", "markdown"]) == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith("| mask | 80.00 |") and "97.00" in ln)
    assert "83.96" in line and "-3.96" in line  # R-AMT's published 16-shot average and our difference


def test_base_to_new_and_shift_runs_report_by_the_published_layout(real_root, tmp_path, capsys):
    import json

    from bench.cli import main

    targets = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
    specs = [spec("zeroshot", "caltech101", real_root, protocol="base2new"),
             spec("zeroshot", "imagenet", real_root, protocol="shift", shift_targets=targets)]
    made = [run_trial(s) for s in specs]
    text = ""
    for i, (s, row) in enumerate(zip(specs, made)):
        folder = RunFolder(tmp_path, f"p{i}")
        folder.ensure()
        folder.write_row({**row, "stack": s.stack, "dataset": s.dataset, "shots": s.shots, "seed": s.seed,
                          "protocol": s.protocol, "suite": ["base2new", "imagenet_shift"][i], "trial_id": f"t{i}", "status": "ok", "run": f"p{i}"})
        assert main(["report", "--results", str(tmp_path), "--run", f"p{i}", "--format", "csv"]) == 0
        text += capsys.readouterr().out
    assert "2-shot new-class top-1 (%)" in text and "2-shot harmonic mean" in text
    hm_line = next(ln for ln in text.splitlines() if ln.startswith('"2-shot harmonic mean') and ",zeroshot," in ln)
    base, new = made[0]["top1"], made[0]["top1_new"]
    assert f"{2 * base * new / (base + new) if base + new else 0:.2f}" in hm_line
    header = next(ln for ln in text.splitlines() if ln.startswith("table,method,imagenet,"))
    assert header.split(",")[2:] == ["imagenet", *targets, "Average"]
    shifted = json.loads(made[1]["extras"])
    import csv

    shift_line = next(r for r in csv.reader(text.splitlines()) if r[:2] == ["2-shot top-1 (%), mean over seeds",
                                                                                 "zeroshot"] and len(r) == 8)
    assert shift_line[-1] == f"{sum(shifted[f'top1.{t}'] for t in targets) / 4:.2f}"
