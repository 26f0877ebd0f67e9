"""Datasets are plugins: one registry filled from the bench.datasets entry points, built-ins included."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.data.catalog import dataset_origin, datasets, get_dataset, register_dataset
from bench.data.templates import IMAGENET_TEMPLATES_SELECT

ROOT = Path(__file__).resolve().parents[1]


def python(code: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_builtins_come_from_the_entry_points_with_their_source():
    table = datasets()
    assert dataset_origin("imagenet") == "bench (real)" and dataset_origin("syn_colour") == "bench (synthetic)"
    assert len([n for n in table if dataset_origin(n) == "bench (real)"]) == 15
    assert len([n for n in table if dataset_origin(n) == "bench (synthetic)"]) == 8


def test_the_registry_imports_no_table_and_the_tables_import_no_registry(tmp_path):
    ran = python("import sys, bench.data.catalog; print(sorted(m for m in sys.modules if m.startswith('bench.data')))",
                 tmp_path)
    loaded = json.loads(ran.stdout.replace("'", '"'))
    assert "bench.data.real" not in loaded and "bench.data.synthetic" not in loaded
    ran = python("import sys, bench.data.real, bench.data.synthetic; print('bench.data.catalog' in sys.modules)",
                 tmp_path)
    assert ran.stdout.strip() == "False", ran.stderr


def test_register_dataset_at_run_time(fixture_root):
    assert dataset_origin("fixture") == "registered at run time"
    with pytest.raises(ValueError, match="registered twice"):
        register_dataset(get_dataset("fixture"))
    with pytest.raises(ValueError, match="registered twice"):
        register_dataset(dataclasses.replace(get_dataset("fixture"), name="dtd"))


FAKE_MODULE = '''
from bench.data.dataset import DatasetDef
ONE = DatasetDef("fake_one", "a fake dataset", "fake_one", "images", "a photo of a {}.", split_file="s.json")
TABLE = [DatasetDef("fake_a", "fake a", "a", "i", "{} thing."), DatasetDef("fake_b", "fake b", "b", "i", "{}.")]
WRONG = ONE
CLASH = [DatasetDef("dtd", "not the real dtd", "dtd", "images", "{}.")]
NOT_A_DATASET = 42
'''
FAKE_ENTRY_POINTS = """[bench.datasets]
fake_one = fake_datasets:ONE
fakes = fake_datasets:TABLE
misnamed = fake_datasets:WRONG
clash = fake_datasets:CLASH
notone = fake_datasets:NOT_A_DATASET
missing = fake_datasets_nope:X
"""


def test_third_party_entry_points_are_listed_with_their_package_and_broken_ones_are_shown(tmp_path):
    site = tmp_path / "site"
    dist = site / "fake_datasets-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-datasets\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(FAKE_ENTRY_POINTS)
    (site / "fake_datasets.py").write_text(FAKE_MODULE)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "250"}
    code = ("from bench.data.catalog import datasets, dataset_origin, broken_dataset_plugins as b; import json; "
            "print(json.dumps({'origin': {n: dataset_origin(n) for n in datasets()}, 'broken': b()}))")
    ran = python(code, tmp_path, env)
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert out["origin"]["fake_one"] == "fake-datasets"
    assert out["origin"]["fake_a"] == out["origin"]["fake_b"] == "fake-datasets (fakes)"
    assert out["origin"]["dtd"] == "bench (real)"  # a clash never replaces the first registration
    assert set(out["broken"]) == {"misnamed", "dtd", "notone", "missing"}
    assert "name claimed twice" in out["broken"]["dtd"] and "ModuleNotFoundError" in out["broken"]["missing"]
    listed = subprocess.run([sys.executable, "-m", "bench.cli", "list", "datasets"], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, **env})
    assert listed.returncode == 0 and "fake-datasets (fakes)" in listed.stdout and "failed to load" in listed.stdout


RUN = """
import json, torch
torch.set_num_threads(1)
from bench.spec import TrialSpec
from bench.trial import run_trial
from bench.data.catalog import get_dataset
spec = dict(run="r", suite="t", dataset="example_stripes", shots=4, seed=1)
lp = run_trial(TrialSpec(stack="linear_probe", **spec))
zs = run_trial(TrialSpec(stack="zeroshot", **spec))
print(json.dumps({"lp": lp["top1"], "zs": zs["top1"], "n_test": lp["n_test"],
                  "templates": list(get_dataset("example_stripes").templates)}))
"""


def _pip_install(path: Path) -> None:
    base = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(path)]
    if subprocess.run(base[:6] + ["--no-build-isolation"] + base[6:], capture_output=True).returncode:
        subprocess.run(base, check=True, capture_output=True)  # a setuptools too old to build in place


def test_example_dataset_plugin_installs_lists_and_runs(tmp_path):
    _pip_install(ROOT / "examples" / "bench-example-dataset")
    try:
        listed = subprocess.run([sys.executable, "-m", "bench.cli", "list", "datasets"], capture_output=True,
                                text=True, cwd=tmp_path, env={**os.environ, "COLUMNS": "250"})
        assert listed.returncode == 0 and "example_stripes" in listed.stdout
        assert "bench-example-dataset" in listed.stdout
        ran = python(RUN, tmp_path, {"BENCH_CACHE": str(tmp_path / "cache")}, timeout=600)
        assert ran.returncode == 0, ran.stderr
        result = json.loads(ran.stdout.strip().splitlines()[-1])
        assert result["n_test"] == 40 and len(result["templates"]) == 2
        assert result["lp"] > 25 + 20  # 4 classes: the image features tell stripe orientations apart
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "bench-example-dataset"],
                       capture_output=True)


def test_tip_adapter_uses_the_official_imagenet_ensemble_and_nothing_else_does(fixture_root):
    from bench.methods.tip_adapter import TipAdapter
    from bench.spec import TrialSpec
    from bench.trial import build_context

    spec = TrialSpec(run="r", suite="t", dataset="fixture", shots=2, seed=1, stack="tip_adapter", pretrained="none",
                     data_root=str(fixture_root))
    config = TipAdapter.make_config("fixture", 2, {"search_hp": False, "augment_views": 1})
    for name, templates in (("imagenet", IMAGENET_TEMPLATES_SELECT), ("fixture", ("a photo of a {} patch.",))):
        ctx = build_context(spec)
        ctx.data = dataclasses.replace(ctx.data, name=name)
        TipAdapter(config).fit(ctx.clf, ctx)
        assert torch.allclose(ctx.clf.head.weights, ctx.text_weights(templates=list(templates)), atol=1e-6), name
    assert TipAdapter.version == "2"
