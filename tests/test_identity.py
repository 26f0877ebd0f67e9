"""A result is tied to the data, settings and weights that made it: fingerprints in trial ids and stage
keys, settings checked before any trial, one report row per configuration, unreadable rows set aside,
the synthetic datasets pinned by a manifest, the published table shipped in the package."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from bench import BenchError
from bench.cli import main
from bench.data.synthetic import SPECS, _build, content_digest, manifest, materialize
from bench.fingerprint import fingerprinted
from bench.plan import plan_trials
from bench.report.tables import accuracy_tables, table_rows
from bench.results import RunFolder
from bench.spec import TrialSpec
from bench.suite import load_suite
from bench.trial import run_trial
from bench.rows import spec_fields

ROOT = Path(__file__).resolve().parents[1]
FAST_MASK = {"mask": {"steps": "2", "batch_size": "8"}}


@pytest.fixture
def data(fixture_root, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(fixture_root, root)
    return root


def fixture_spec(root: Path, stack: str = "zeroshot", **kw) -> TrialSpec:
    return fingerprinted(TrialSpec(run="r", suite="t", dataset="fixture", shots=2, seed=1, stack=stack,
                                   data_root=str(root), **kw))


def relabel(root: Path) -> None:
    """Swap the labels of two classes' train images in the split file (what the issue saw)."""
    path = root / "fixture" / "split_zhou_Fixture.json"
    split = json.loads(path.read_text())
    for item in split["train"]:
        if item[1] in (0, 1):
            item[1] = 1 - item[1]
            item[2] = "green" if item[1] == 1 else "red"
    path.write_text(json.dumps(split))


# -- 1. data changes ---------------------------------------------------------------------------------
def test_fingerprint_follows_content_not_location(data, tmp_path):
    base = fixture_spec(data)
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved)
    assert fixture_spec(moved).trial_id == base.trial_id  # the same data in another folder
    relabel(moved)
    assert fixture_spec(moved).trial_id != base.trial_id
    image = data / "fixture" / "images" / "blue" / "test_0.png"
    image.write_bytes(image.read_bytes() + b"\0")  # a replaced test image (other size)
    changed = fixture_spec(data)
    assert changed.trial_id != base.trial_id and changed.dataset_fingerprint != base.dataset_fingerprint


def test_changed_labels_train_afresh_instead_of_reusing_the_stage(data, tmp_path):
    cache = str(tmp_path / "cache")
    first = fixture_spec(data, "mask", pretrained="bundled", cache_dir=cache, overrides=FAST_MASK)
    again = run_trial(dataclasses.replace(first, run="again"))
    assert "reused_stage" not in again["extras"]
    assert "reused_stage" in run_trial(first)["extras"]  # same data: the masks are learned once
    relabel(data)
    second = fixture_spec(data, "mask", pretrained="bundled", cache_dir=cache, overrides=FAST_MASK)
    assert second.stage_key(0) != first.stage_key(0)
    assert "reused_stage" not in run_trial(second)["extras"]


def test_a_trial_refuses_data_changed_after_planning(data):
    spec = fixture_spec(data)
    relabel(data)
    with pytest.raises(BenchError, match="changed after this run was planned"):
        run_trial(spec)


def fake_row(spec: TrialSpec, top1: float, finished: str = "2026-01-01") -> dict:
    return {**spec_fields(spec), "status": "ok", "top1": top1, "n_test": 20,
            "finished_at": pd.Timestamp(finished, tz="UTC")}


def test_report_sets_rows_on_older_data_aside(data, tmp_path):
    folder = RunFolder(tmp_path / "results", "r")
    folder.ensure()
    old = fixture_spec(data)
    folder.write_row(fake_row(old, 10.0, "2026-01-01"))
    relabel(data)
    new = fixture_spec(data)
    folder.write_row(fake_row(dataclasses.replace(new, seed=1), 90.0, "2026-02-01"))
    rows, note = table_rows(folder.read())
    assert list(rows.top1) == [90.0]
    assert note.startswith("set aside 1 rows made on another version of their data (fixture: 1)")
    mean, _ = accuracy_tables(rows)[2]
    assert mean.at["zeroshot", "fixture"] == 90.0  # not the mean of old and new
    # `bench run` names the current version: the older rows are the ones left out
    kept, _ = table_rows(folder.read(), current={"fixture": old.dataset_fingerprint})
    assert list(kept.top1) == [10.0]


# -- 2. settings checked before any trial ------------------------------------------------------------
@pytest.mark.parametrize("setting, says", [
    ("coop.class_token_position=bogus", "choose one of 'end', 'middle', 'front'"),
    ("coop.precision=fp8", "choose one of 'auto', 'fp16', 'fp32', 'amp'"),
    ("clip_adapter.epochs=0", "must be >= 1"),
    ("tip_adapter_f.select=best", "choose one of 'val', 'last'"),
    ("mask.lambda_table=x", "choose one of '', 'readme'"),
    ("mask.lr=-1", "must be > 0"),
    ("mask.layers=blocks", "write 'all' or block indices"),
])
def test_bad_settings_are_one_line_before_any_trial(setting, says, tmp_path, capsys):
    method = setting.split(".")[0]
    code = main(["run", "--datasets", "syn_colour", "--methods", method, "--set", setting, "--shots", "1",
                 "--results", str(tmp_path), "--run", "bad"])
    err = capsys.readouterr().err
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def test_a_protocol_typo_is_refused(tmp_path, capsys):
    suite = tmp_path / "typo.toml"
    suite.write_text('datasets = ["syn_colour"]\nshots = [1]\nseeds = [1]\nmethods = ["zeroshot"]\n'
                     'protocol = "base-to-new"\n')
    code = main(["run", "--suite", str(suite), "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown protocol 'base-to-new'" in err and "base2new" in err


def test_base2new_refuses_stacks_that_cannot_transfer_at_planning(tmp_path):
    with pytest.raises(BenchError, match="cannot classify classes it was not trained on"):
        plan_trials(load_suite("base2new"), run="b", results=str(tmp_path), methods=["tip_adapter"],
                    datasets=["syn_colour"], model="tiny")


# -- 3. --model takes its own weights ----------------------------------------------------------------
def test_model_without_pretrained_takes_the_models_own_weights(data, tmp_path):
    fewshot11 = load_suite("fewshot11")
    assert fewshot11.pretrained == "openai"
    specs = plan_trials(dataclasses.replace(fewshot11, set={}), run="m", results=str(tmp_path),
                        methods=["zeroshot"], datasets=["fixture"], shots=[1], seeds=[1], model="tiny",
                        data_root=str(data), device="cpu")
    assert [s.pretrained for s in specs] == ["bundled"]
    row = run_trial(specs[0])
    assert row["status"] == "ok" and row["top1"] > 25  # the bundled weights: far above chance on 4 colours


def test_a_tag_the_model_lacks_names_the_cause(tmp_path, capsys):
    code = main(["run", "--model", "tiny", "--pretrained", "openai", "--datasets", "syn_colour",
                 "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "has no 'openai' weights" in err and "did you mean" not in err


# -- 4. unreadable row files -------------------------------------------------------------------------
def test_a_truncated_row_file_is_set_aside_and_its_trial_redone(data, tmp_path, capsys):
    folder = RunFolder(tmp_path, "r")
    folder.ensure()
    good, cut = fixture_spec(data), fixture_spec(data, "linear_probe")
    folder.write_row(fake_row(good, 50.0))
    folder.write_row(fake_row(cut, 60.0))
    path = Path(folder.trials) / f"{cut.trial_id}.parquet"
    path.write_bytes(path.read_bytes()[:100])
    assert folder.done_ids() == {good.trial_id}
    assert "1 unreadable row files" in capsys.readouterr().err
    aside = list((Path(folder.root) / "unreadable").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith(cut.trial_id)  # kept, not deleted
    assert main(["report", "--run", "r", "--results", str(tmp_path)]) == 0


# -- 5. the synthetic datasets are the same bytes everywhere -----------------------------------------
def test_generated_datasets_match_the_committed_manifest(tmp_path):
    expected = manifest()
    assert set(expected) == set(SPECS)
    for name, spec in SPECS.items():
        _build(spec, tmp_path / spec.folder, check=False)
        assert content_digest(tmp_path / spec.folder) == expected[name], name


def test_a_folder_from_another_generator_is_rebuilt(tmp_path):
    folder = materialize("syn_colour", tmp_path)
    stamp = folder / ".bench-synthetic.json"
    stamp.write_text(json.dumps({"version": 1, "name": "syn_colour"}))  # what an older generator left
    next(folder.rglob("*.png")).write_bytes(b"not the image")
    assert materialize("syn_colour", tmp_path) == folder
    assert content_digest(folder) == manifest()["syn_colour"]


# -- 6. the published table ships in the wheel -------------------------------------------------------
def test_the_wheel_ships_the_published_table_and_compare_works_from_it(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(wheels.glob("bench-*.whl"))
    assert "bench/reference/published.csv" in zipfile.ZipFile(wheel).namelist()
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import bench, bench.published as p; assert bench.__file__.startswith(%r), bench.__file__; "
             "print(len(p.load_published()))" % str(site))
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.returncode == 0 and int(out.stdout) > 1000, out.stderr


# -- 8. one report row per configuration ---------------------------------------------------------------
def test_two_settings_of_one_stack_are_two_labelled_rows(data, tmp_path, capsys):
    folder = RunFolder(tmp_path, "abl")
    folder.ensure()
    ramt = fixture_spec(data, "mask")
    amt = fixture_spec(data, "mask", overrides={"mask": {"gdr": "false", "lr": "1e-3"}})
    folder.write_row(fake_row(ramt, 58.75))
    folder.write_row(fake_row(amt, 90.25))
    mean, _ = accuracy_tables(folder.read())[2]
    assert mean.loc["mask", "fixture"] == 58.75
    assert mean.loc["mask (gdr=false, lr=0.001)", "fixture"] == 90.25
    assert main(["report", "--run", "abl", "--results", str(tmp_path), "--format", "markdown"]) == 0
    assert "| mask (gdr=false, lr=0.001) | 90.25 |" in capsys.readouterr().out
