"""Named variants: a method under its own name with settings of its own (``amt`` = mask with gdr=false),
defined by plugins or suite files; and the ablation suite built from them."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stdout

import pandas as pd
import pytest

from bench.errors import BenchError
from bench.trial import execute_trial
from bench.plan import parse_sets, plan_trials
from bench.registry import canonical_stack, define_variants, get_method, parse_stack
from bench.results import RunFolder
from bench.suite import Suite, load_suite

FAST = {"mask": {"steps": 2, "lr": 1e-3}, "amt": {"steps": 2, "lr": 1e-3}, "coop": {"epochs": 1, "feature_views": 1}}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_amt_is_mask_with_gdr_off_under_its_own_name():
    amt, mask = get_method("amt"), get_method("mask")
    assert issubclass(amt, mask) and amt.name == "amt" and amt.variant_of == "mask"
    assert amt.changes == mask.changes and amt.stacked_gain and amt.reusable()
    cfg = amt.make_config("caltech101", 16)
    assert cfg.gdr is False and cfg == mask.make_config("caltech101", 16, {"gdr": False})
    assert amt.make_config("imagenet", 16).lr == mask.make_config("imagenet", 16).lr  # the base's defaults_for
    assert amt.make_config("dtd", 4, {"lr": "1e-3"}).lr == 1e-3
    assert mask.version in amt.version and "gdr" in amt.version
    with pytest.raises(BenchError, match="unknown setting 'amt.nope'"):
        amt.make_config("dtd", 4, {"nope": 1})
    assert parse_sets(["amt.lr=1e-3"]) == {"amt": {"lr": "1e-3"}}
    assert canonical_stack("amt+coop") == "coop+amt"
    assert [p.name for p in parse_stack("coop+amt")] == ["amt", "coop"]
    with pytest.raises(BenchError, match="both change"):
        parse_stack("mask+amt")


def test_define_variants_checks_each_definition():
    define_variants({"vt_same": {"method": "mask", "mlp": True}})
    define_variants({"vt_same": {"method": "mask", "mlp": True}})  # the same again: fine
    define_variants({"amt": {"method": "mask", "gdr": False}})  # the built-in one, without its description
    for table, fragment in [({"vt_same": {"method": "mask", "mlp": False}}, "already defined"),
                            ({"coop": {"method": "mask"}}, "name of an installed method"),
                            ({"vt_bad": {"method": "mask", "gdr_lambda": 2}}, "must be"),
                            ({"vt_typo": {"method": "mask", "mpl": True}}, "unknown setting"),
                            ({"vt_nobase": {"gdr": False}}, "naming its base"),
                            ({"vt_self": {"method": "vt_self"}}, "builds on itself"),
                            ({"Vt": {"method": "mask"}}, "bad variant name")]:
        with pytest.raises(BenchError, match=fragment):
            define_variants(table)
    with pytest.raises(BenchError, match="unknown method 'vt_typo'"):
        get_method("vt_typo")  # a refused definition leaves nothing behind


def test_suite_files_define_variants_and_refuse_bad_ones(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text('datasets = ["fixture"]\nshots = [2]\nseeds = [1]\nmethods = ["vt_amt_mlp"]\n'
                    '[variants]\nvt_amt_mlp = { method = "amt", mlp = true }\n')
    load_suite(str(good))
    cfg = get_method("vt_amt_mlp").make_config("dtd", 2)
    assert (cfg.gdr, cfg.mlp) == (False, True)  # a variant of a variant keeps both settings
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("mlp = true", "mlp = 3"))
    with pytest.raises(BenchError, match=r"suite file .*bad.toml: variant 'vt_amt_mlp'"):
        load_suite(str(bad))


def test_list_methods_shows_variants_with_base_and_settings():
    from bench.cli import main

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert main(["list", "methods", "--suite", "synthetic_ablation"]) == 0
    text = buffer.getvalue()
    assert "amt" in text and "as mask, but gdr=false" in text
    assert "mask_lambda03" in text and "gdr_lambda=0.3" in text


def test_a_worker_process_resolves_a_suite_variant_from_the_spec_alone(tmp_path, fixture_root):
    define_variants({"vt_worker": {"method": "mask", "gdr_lambda": 0.25}})
    suite = Suite(name="t", description="", datasets=["fixture"], shots=[2], seeds=[1], methods=["vt_worker"],
                  pretrained="none", device="cpu")
    spec = plan_trials(suite, run="w", results=str(tmp_path), data_root=str(fixture_root))[0]
    code = ("import json, sys; from bench.spec import TrialSpec; "
            "s = TrialSpec.from_dict(json.loads(sys.stdin.read())); "
            "print(s.trial_id, s.resolved.plugins[0][1].gdr_lambda)")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(spec.to_dict()), capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [spec.trial_id, "0.25"]


def run_suite(suite: Suite, tmp_path, run: str, data_root=None, **plan) -> pd.DataFrame:
    specs = plan_trials(suite, run=run, results=str(tmp_path), data_root=data_root, **plan)
    RunFolder(tmp_path, run).ensure()
    for spec in specs:
        row = execute_trial(spec)
        assert row["status"] == "ok", row["error"]
    return RunFolder(tmp_path, run).read()


def test_variants_run_stack_and_report_under_their_names(tmp_path, fixture_root):
    from bench.report.tables import accuracy_tables, gain_rows, table_rows

    suite = Suite(name="t", description="", datasets=["fixture"], shots=[2], seeds=[1],
                  methods=["zeroshot", "coop", "mask", "amt", "amt+coop"], pretrained="none", device="cpu",
                  set=FAST)
    rows = run_suite(suite, tmp_path, "v", str(fixture_root), infer_images=8)
    amt = rows[rows["stack"] == "amt"].iloc[0]
    assert json.loads(amt.settings) == {"amt": {"lr": 1e-3, "steps": 2}}  # relative to amt's own defaults
    assert json.loads(amt.hparams)["amt"]["gdr"] is False
    recorded = json.loads(amt.variants)
    assert list(recorded) == ["amt"] and recorded["amt"]["method"] == "mask" and recorded["amt"]["gdr"] is False
    assert set(rows["stack"]) == {"zeroshot", "coop", "mask", "amt", "coop+amt"}
    assert rows.trial_id.nunique() == len(rows)
    labelled, _ = table_rows(rows)
    mean, _ = accuracy_tables(labelled)[2]
    assert {"amt", "mask", "coop+amt"} <= set(mean.index)
    gains = gain_rows(mean)
    assert {"coop+amt vs coop", "amt vs mask", "amt vs zeroshot"} <= set(gains.index)
    assert gains.loc["amt vs mask", "fixture"] == pytest.approx(mean.loc["amt", "fixture"] - mean.loc["mask", "fixture"])


def test_amt_rows_line_up_with_the_published_amt_rows():
    from bench.published import compare

    mean = pd.DataFrame({"imagenet": [72.0, 73.0], "eurosat": [90.0, 91.0]}, index=["amt", "mask"])
    table = compare(mean, 16, "ViT-B-16")
    assert table.at["amt", ("imagenet", "paper")] == pytest.approx(72.60)
    assert table.at["amt", ("eurosat", "diff")] == pytest.approx(90.0 - 92.00)
    assert "R-AMT project page figure" in table.attrs["notes"][("amt", "imagenet")]


def test_the_synthetic_ablation_runs_end_to_end_with_one_row_per_variant(tmp_path):
    from bench.cli import main

    suite = load_suite("synthetic_ablation")
    variants = [m for m in suite.methods if m != "zeroshot"]
    assert {"mask", "amt", "mask_mlp", "mask_lambda03", "mask_lambda05"} <= set(variants)
    # A score moves at most lr per Adam step, lr/2 on average under the cosine schedule: a mask can only
    # switch off if the suite lets it travel from init to the threshold.
    configs = {m: get_method(m).make_config(suite.datasets[0], 2, suite.overrides_for(suite.datasets[0]).get(m))
               for m in variants}
    for name, cfg in configs.items():
        assert cfg.lr * cfg.steps / 2 > cfg.init - cfg.threshold, name
    # The suite's trials on a reduced scale: a quarter of the steps at four times the lr (the same travel).
    quick = {m: {"steps": cfg.steps // 4, "lr": cfg.lr * 4} for m, cfg in configs.items()}
    rows = run_suite(suite, tmp_path, "abl", datasets=suite.datasets[:1], shots=[2], sets=quick, infer_images=16)
    assert sorted(rows["stack"]) == sorted(suite.methods) and (rows.status == "ok").all()
    sparsity = rows.set_index("stack")["mask_sparsity"]
    assert (sparsity[variants] > 1.0).all(), sparsity  # every variant switched weights off: it ablates
    assert rows.infer_images_per_s.gt(0).all()
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert main(["report", "--run", "abl", "--results", str(tmp_path), "--format", "csv"]) == 0
    table = pd.read_csv(io.StringIO(buffer.getvalue()))
    methods = list(table["method"])
    for name in suite.methods:
        assert methods.count(name) == 1, methods  # one row per variant, under its own name (settings {})
    for name in ("amt", "mask_mlp", "mask_lambda03", "mask_lambda05"):
        assert f"{name} vs mask" in methods
