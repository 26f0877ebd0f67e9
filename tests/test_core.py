"""Plugin contract, stacks, trial ids and run planning."""
from __future__ import annotations

import dataclasses

import pytest

from bench import BenchError, Method, Part
from bench.plan import check_names, parse_int_list, parse_sets, plan_trials
from bench.registry import METHODS, canonical_stack, get_method, methods, parse_stack
from bench.fingerprint import fingerprinted
from bench.spec import TrialSpec
from bench.suite import Suite, load_suite


@dataclasses.dataclass
class _Cfg:
    lr: float = 0.1
    epochs: int = 3
    flag: bool = False
    name: str = "x"
    steps: int | None = None


class _Toy(Method):
    name = "toy"
    description = "toy"
    Config = _Cfg


def test_make_config_coerces_strings_from_the_command_line():
    cfg = _Toy.make_config("d", 4, {"lr": "1e-3", "epochs": "7", "flag": "true", "steps": "none"})
    assert (cfg.lr, cfg.epochs, cfg.flag, cfg.steps) == (1e-3, 7, True, None)
    assert _Toy.make_config("d", 4, {"steps": "12"}).steps == 12


@pytest.mark.parametrize("overrides, fragment", [
    ({"lrr": "1"}, "unknown setting 'toy.lrr'"),
    ({"epochs": "2.5"}, "bad value '2.5' for 'toy.epochs'"),
    ({"flag": "maybe"}, "bad value 'maybe' for 'toy.flag'"),
    ({"lr": "fast"}, "bad value 'fast' for 'toy.lr'"),
])
def test_make_config_rejects_bad_settings(overrides, fragment):
    with pytest.raises(BenchError, match=fragment.replace("(", r"\(")):
        _Toy.make_config("d", 4, overrides)


def test_in_tree_methods_are_discovered_through_entry_points():
    found = methods()
    assert "zeroshot" in found and not found["zeroshot"].changes


@pytest.mark.parametrize("stack, fragment", [
    ("coop++mask", "malformed method stack"),
    ("+mask", "malformed method stack"),
    ("mask+", "malformed method stack"),
    ("", "malformed method stack"),
    ("zeroshotx", "unknown method 'zeroshotx' (did you mean 'zeroshot'?)"),
    ("zeroshot+zeroshot", "names a method twice"),
])
def test_bad_stacks_fail_with_one_clear_line(stack, fragment):
    with pytest.raises(BenchError) as info:
        parse_stack(stack)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_two_methods_claiming_the_same_part_are_rejected(monkeypatch):
    class HeadA(Method):
        name, description, changes = "head_a", "a", frozenset({Part.HEAD})

    class PromptHead(Method):
        name, description, changes = "prompt_head", "b", frozenset({Part.TEXT_PROMPT, Part.HEAD})

    class Tokens(Method):
        name, description, changes = "tokens", "t", frozenset({Part.IMAGE_TOKENS})

    class Enc(Method):
        name, description, changes = "enc", "e", frozenset({Part.IMAGE_WEIGHTS})

    table = {"head_a": HeadA, "prompt_head": PromptHead, "tokens": Tokens, "enc": Enc}
    monkeypatch.setattr(METHODS, "_found", (table, {n: "test" for n in table}, {}))
    with pytest.raises(BenchError, match="'head_a' and 'prompt_head' .* both change the head;"):
        parse_stack("head_a+prompt_head")
    assert [m.name for m in parse_stack("head_a+enc")] == ["enc", "head_a"]  # training order
    # disjoint parts stack, whatever their number: baked weights first, then tokens, then prompt and head
    assert [m.name for m in parse_stack("prompt_head+tokens+enc")] == ["enc", "tokens", "prompt_head"]
    assert canonical_stack("enc+tokens") == "tokens+enc"


def test_trial_id_is_stable_and_tracks_what_changes_results():
    plain = TrialSpec(run="r", suite="s", dataset="syn_colour", shots=4, seed=1, stack="zeroshot")
    with pytest.raises(ValueError, match="fingerprints from planning"):
        plain.trial_id
    base = fingerprinted(plain)
    same = dataclasses.replace(base, run="other", results="/elsewhere", device="cuda")
    assert base.trial_id == same.trial_id
    for change in ({"seed": 2}, {"shots": 8}, {"dataset": "syn_texture"}, {"model": "ViT-B-16"}):
        assert fingerprinted(dataclasses.replace(plain, **change)).trial_id != base.trial_id
    for change in ({"data_fingerprint": "0" * 16}, {"weights_fingerprint": "sha256:0"}, {"protocol": "base2new"}):
        assert dataclasses.replace(base, **change).trial_id != base.trial_id
    assert TrialSpec.from_dict(base.to_dict()) == base


def test_parse_helpers_give_one_line_errors():
    assert parse_int_list("1, 2,4", "shots") == [1, 2, 4]
    with pytest.raises(BenchError, match="--seeds must be a comma list of integers"):
        parse_int_list("1,two", "seeds")
    assert parse_sets(["zeroshot.a=1"]) == {"zeroshot": {"a": "1"}}
    with pytest.raises(BenchError, match="write METHOD.KEY=VALUE"):
        parse_sets(["lr=1"])
    assert parse_sets(["nosuch.lr=1"]) == {"nosuch": {"lr": "1"}}  # the run's methods decide: check_names
    suite = Suite(name="t", description="", datasets=["syn_colour"], shots=[1], seeds=[1], methods=["zeroshot"])
    with pytest.raises(BenchError, match="--set nosuch.lr: 'nosuch' is not in this run, whose methods are zeroshot"):
        check_names(suite, methods=None, datasets=None, sets={"nosuch": {"lr": "1"}})
    with pytest.raises(BenchError, match="unknown method 'nosuch'"):
        check_names(suite, methods=["nosuch"], datasets=None, sets={})


def test_plan_covers_the_grid_and_validates_up_front(tmp_path):
    suite = load_suite("synthetic")
    specs = plan_trials(suite, run="r", results=str(tmp_path), methods=["zeroshot"],
                        datasets=["syn_colour", "syn_texture"], shots=[1, 4], seeds=[1, 2])
    assert len(specs) == 8 and len({s.trial_id for s in specs}) == 8
    with pytest.raises(BenchError, match="unknown dataset 'syn_colr'"):
        plan_trials(suite, run="r", results=str(tmp_path), datasets=["syn_colr"])
    with pytest.raises(BenchError, match="shots must be positive"):
        plan_trials(suite, run="r", results=str(tmp_path), shots=[0])
    with pytest.raises(BenchError, match="bad run name"):
        plan_trials(suite, run="../escape", results=str(tmp_path))


def test_unknown_suite_suggests_the_closest(tmp_path):
    with pytest.raises(BenchError, match="did you mean 'synthetic'"):
        load_suite("synthetc")
    bad = tmp_path / "bad.toml"
    bad.write_text("datasets = [")
    with pytest.raises(BenchError, match="not valid TOML"):
        load_suite(str(bad))


def test_get_method_reports_a_broken_plugin(monkeypatch):
    monkeypatch.setattr(METHODS, "_found", ({}, {}, {"broken": "ImportError: x"}))
    with pytest.raises(BenchError, match="method plugin 'broken' failed to load"):
        get_method("broken")
