"""`bench tune`: search spaces declared on settings, searches that never read the test split, val-tuned rows
beside fixed ones (with ids of fixed rows unchanged), ASHA within a cell, and the report's separate rows."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from bench import BenchError
from bench.context import TrialContext
from bench.trial import execute_trial
from bench.plan import plan_trials
from bench.plugin import Search
from bench.registry import get_method
from bench.report.tables import gain_rows, protocol_tables, selection_groups, table_rows
from bench.results import RunFolder
from bench.selection import SealedSplit, sealed_test
from bench.spec import TrialSpec
from bench.suite import Suite, load_suite
from bench.trial import build_context, run_trial
from bench.tune import TunePlan, draw_points, parse_space, plan_cells, search_folder, stack_space, suite_spaces

FAST = {"clip_adapter": {"epochs": 4, "batch_size": 8, "views": 2}}


def fixture_suite(**search) -> Suite:
    return Suite(name="t", description="", datasets=["fixture"], shots=[2], seeds=[1], methods=["clip_adapter"],
                 model="tiny", pretrained="none", device="cpu", set=FAST, search=search)


# -- search spaces -----------------------------------------------------------------------------------
def test_spaces_are_declared_where_settings_are_and_only_where_a_paper_tuned():
    coop = get_method("coop").search_space()
    assert coop["lr"] == Search(low=2e-4, high=2e-2, log=True) and set(coop["n_ctx"].choices) == {4, 8, 16}
    assert set(get_method("tip_adapter_f").search_space()) == {"init_alpha", "init_beta", "epochs", "lr"}
    assert set(get_method("mask").search_space()) == {"lr", "threshold", "gdr_lambda"}
    assert "C" in get_method("linear_probe").search_space()  # declared inside Optional[...]
    assert get_method("zeroshot").search_space() == {}
    assert str(coop["lr"]) == "log [0.0002, 0.02]"
    with pytest.raises(ValueError):
        Search(low=1.0, high=0.5)


def test_a_suite_file_replaces_a_methods_space_and_is_checked(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\ndatasets = ["syn_colour"]\nshots = [4]\nseeds = [1]\nmethods = ["coop+mask"]\n'
                    '[search.coop]\nlr = { low = 1e-3, high = 1e-2, log = true }\nn_ctx = [4, 8]\n[search.mask]\n')
    spaces = suite_spaces(load_suite(str(path)))
    spec = TrialSpec(run="r", suite="s", dataset="syn_colour", shots=4, seed=1, stack="coop+mask")
    assert stack_space(spec, spaces) == {"coop.lr": Search(low=1e-3, high=1e-2, log=True),
                                         "coop.n_ctx": Search(choices=(4, 8))}  # mask: an empty table, fixed
    ratio = get_method("clip_adapter")
    with pytest.raises(BenchError, match="unknown setting 'clip_adapter.rate'"):
        parse_space(ratio, {"rate": [0.1]}, "suite")
    with pytest.raises(BenchError, match="leaves the setting's bounds"):
        parse_space(ratio, {"ratio": {"low": 0.5, "high": 2.0}}, "suite")


def test_points_are_drawn_reproducibly_within_the_space():
    space = {"coop.lr": Search(low=1e-4, high=1e-2, log=True), "coop.n_ctx": Search(choices=(4, 8, 16))}
    hints = {"coop.lr": float, "coop.n_ctx": int}
    points = draw_points(space, hints, 5, "random", seed=7)
    assert points == draw_points(space, hints, 5, "random", seed=7) != draw_points(space, hints, 5, "random", seed=8)
    assert all(1e-4 <= p["coop.lr"] <= 1e-2 and p["coop.n_ctx"] in (4, 8, 16) for p in points)
    grid = draw_points(space, hints, 5, "grid", seed=7)  # 2 values per axis: 4 points, at most the budget
    assert len(grid) == 4 and {p["coop.n_ctx"] for p in grid} == {4, 16}
    assert {p["coop.lr"] for p in grid} == {3.162e-4, 3.162e-3}  # the centres of the two halves, in log space
    assert len(draw_points(space, hints, 3, "grid", seed=7)) == 3  # 3 lr values, one n_ctx


def test_fixed_rows_keep_their_trial_ids_and_tuned_rows_get_their_own():
    def spec(**kw):
        return TrialSpec(run="r", suite="s", dataset="syn_colour", shots=4, seed=1, stack="coop",
                         data_fingerprint="d" * 16, weights_fingerprint="w" * 16, overrides={"coop": {"lr": 0.01}},
                         **kw)
    assert spec().trial_id == "2862fec5e2138bac"  # as before selections existed
    tuned = spec(selection="val-tuned", tuning={"cell": "c", "budget": 6, "settings": {"coop.lr": 0.01}})
    assert tuned.trial_id != spec().trial_id and tuned.resolved.hyperparameters == spec().resolved.hyperparameters


# -- the test split is sealed in a search --------------------------------------------------------------
def test_a_search_trial_cannot_read_the_test_split(fixture_root):
    assert not SealedSplit.__len__ is list.__len__
    spec = TrialSpec(run="r", suite="t", dataset="fixture", shots=2, seed=1, stack="zeroshot", model="tiny",
                     pretrained="none", data_root=str(fixture_root))
    ctx = build_context(spec)
    ctx.data = sealed_test(ctx.data)
    with pytest.raises(BenchError, match="test split is sealed"):
        ctx.features("test")
    assert ctx.features("val").shape[1] == len(ctx.split("val"))


def permuted_copy(fixture_root: Path, to: Path) -> Path:
    """The fixture with its test labels shuffled among the test images (train and val untouched)."""
    shutil.copytree(fixture_root, to)
    path = to / "fixture" / "split_zhou_Fixture.json"
    split = json.loads(path.read_text())
    pairs = [item[1:] for item in split["test"]]
    random.Random(0).shuffle(pairs)
    split["test"] = [[item[0], *pair] for item, pair in zip(split["test"], pairs)]
    path.write_text(json.dumps(split))
    return to


def tune_serially(root: Path, results: Path) -> tuple[TunePlan, list[TrialSpec]]:
    """A search over Tip-Adapter's declared alpha/beta ranges (its own grid off), configured with a cache
    too weak to matter next to the random model's zero-shot logits: the search has something to find."""
    suite = fixture_suite()
    suite.methods = ["tip_adapter"]
    suite.set = {"tip_adapter": {"search_hp": False, "augment_views": 1, "init_alpha": 1e-4}}
    specs = plan_trials(suite, run="r", results=str(results), data_root=str(root), cache_dir=str(results / "cache"))
    plan = TunePlan(specs, suite, budget=4, search="random")
    RunFolder(results, "r").ensure()
    plan.run(specs, lambda todo, **kw: [execute_trial(s) for s in todo])  # serially, in this process
    return plan, specs


@pytest.fixture
def test_split_trace(monkeypatch) -> list:
    """(selection, trial id) of every trial that looks at its test split."""
    trace, split = [], TrialContext.split

    def traced(self, name):
        if name == "test":
            trace.append((self.spec.selection, self.spec.trial_id))
        return split(self, name)
    monkeypatch.setattr(TrialContext, "split", traced)
    return trace


def test_search_chooses_on_val_only_and_the_choice_survives_permuted_test_labels(
        fixture_root, tmp_path, monkeypatch, one_thread, test_split_trace):
    plan, specs = tune_serially(fixture_root, tmp_path / "a")
    (cell,), (final,) = plan.cells, plan.finals
    search = search_folder(specs[0]).read().sort_values("tune_trial")
    assert list(search.status) == ["ok"] * 4 and search.top1.isna().all()  # scored on val; no test number
    configured = {"tip_adapter.init_alpha": 1e-4, "tip_adapter.init_beta": 1.0}
    assert json.loads(search.tuned.iloc[0]) == configured  # the configured settings come first
    assert final.tuning["settings"] != configured  # and the search found better ones
    # the test split was looked at by the fixed and the final trial's evaluation only
    assert {s for s, _ in test_split_trace} == {"fixed", "val-tuned"}
    assert {i for _, i in test_split_trace} == {specs[0].trial_id, final.trial_id}

    rows = RunFolder(tmp_path / "a", "r").read().set_index("selection")
    tuned, fixed = rows.loc["val-tuned"], rows.loc["fixed"]
    best = search[search.tune_trial == cell.trials.index(next(
        t for t in cell.trials if t.tuning["settings"] == final.tuning["settings"]))].val_top1.iloc[0]
    assert tuned.val_top1 == best == search.val_top1.max() >= fixed.val_top1  # retrained from scratch: same score
    assert json.loads(tuned.tuned) == final.tuning["settings"] and tuned.tune_budget == 4
    assert tuned.tune_search == "random" and tuned.trial_id != fixed.trial_id

    test_split_trace.clear()
    probe, _ = tune_serially(permuted_copy(fixture_root, tmp_path / "permuted"), tmp_path / "b")
    assert [t.tuning["settings"] for t in probe.cells[0].trials] == [t.tuning["settings"] for t in cell.trials]
    assert probe.finals[0].tuning["settings"] == final.tuning["settings"]
    assert probe.finals[0].data_fingerprint != final.data_fingerprint  # the probe did see other test labels

    # the report: fixed and val-tuned rows apart, the gain of tuning, the budget in the title
    ok, _ = table_rows(RunFolder(tmp_path / "a", "r").read())
    (title, group), = selection_groups(ok)
    assert "budget 4 trials" in title and "few-shot val split" in title
    mean, _ = protocol_tables(group)[2]
    assert list(mean.index) == ["tip_adapter", "tip_adapter [val-tuned]"]
    assert list(gain_rows(mean).index) == ["tip_adapter [val-tuned] vs tip_adapter"]


def test_oracle_rows_are_never_put_beside_the_others():
    import pandas as pd

    rows = pd.DataFrame({"selection": ["fixed", "val-tuned", "oracle", None], "tune_search": [None, "grid", "grid", None],
                         "tune_budget": [None, 4, 4, None]})
    groups = selection_groups(rows)
    assert [list(g.selection.fillna("fixed")) for _, g in groups] == [["fixed", "val-tuned", "fixed"], ["oracle"]]
    assert "TEST split" in groups[1][0] and "TEST" not in groups[0][0]


# -- epochs and ASHA -------------------------------------------------------------------------------------
@pytest.mark.parametrize("stack", ["clip_adapter", "mask"])
def test_epoch_reports_leave_training_as_it_was(stack, fixture_root, one_thread):
    suite = fixture_suite()
    suite.methods, suite.set = [stack], {**FAST, "mask": {"steps": 4, "batch_size": 8, "lr": 0.05}}
    spec = plan_trials(suite, run="r", results="unused", data_root=str(fixture_root))[0]
    heard = []
    listened = run_trial(spec, on_epoch=lambda epoch, top1: heard.append((epoch, top1)))
    plain = run_trial(spec)
    assert [e for e, _ in heard] == [1, 2, 3, 4] and all(0 <= t <= 100 for _, t in heard)
    assert (listened["top1"], listened["val_top1"]) == (plain["top1"], plain["val_top1"])


class FakeTrial:
    def __init__(self, cell: str, trial: int):
        self.trial_id = f"{cell}{trial}"
        self.config = {"spec": {"selection": "search", "tuning": {"cell": cell, "trial": trial, "max_epochs": 9}}}


def test_asha_compares_a_trial_with_its_own_cell_only_and_never_stops_the_configured_settings():
    from ray.tune.schedulers import TrialScheduler

    from bench.tune import cell_asha

    asha = cell_asha()
    trials = {name: FakeTrial(name[0], int(name[1])) for name in ("a0", "a1", "a2", "a3", "b1")}
    for t in trials.values():
        asha.on_trial_add(None, t)
    verdict = {name: asha.on_trial_result(None, trials[name], {"epoch": 1, "val_top1": v})
               for name, v in (("a1", 90.0), ("a2", 80.0), ("a3", 10.0), ("a0", 5.0), ("b1", 10.0))}
    assert verdict["a3"] == TrialScheduler.STOP  # worst of its cell at the first rung
    assert verdict["a0"] == verdict["b1"] == TrialScheduler.CONTINUE  # configured settings; another cell
    assert asha.on_trial_result(None, trials["a1"], {"epoch": 9, "val_top1": 95.0}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, trials["a1"], {"progress": "epoch 2"}) == TrialScheduler.CONTINUE


def test_a_search_over_coop_on_top_of_mask_shares_the_masks_stage(fixture_root, tmp_path):
    suite = fixture_suite(mask={})  # mask's settings not searched: every trial restores the same masks
    suite.methods, suite.pretrained = ["coop+mask"], "bundled"
    specs = plan_trials(suite, run="r", results=str(tmp_path), cache_dir=str(tmp_path / "cache"),
                        data_root=str(fixture_root))
    (cell,) = plan_cells(specs, suite, budget=3, search="random")
    assert {t.stage_key(0) for t in cell.trials} == {specs[0].stage_key(0)}
    assert len({t.stage_key(1) for t in cell.trials}) == 3 and set(cell.space) == {"coop.lr", "coop.n_ctx"}
