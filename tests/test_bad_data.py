"""Bad data on disk: a missing or corrupt image fails its trial with one line; a class smaller than K
is taken whole, as Dassl does, and the row says so."""
from __future__ import annotations

import json
import shutil

import pytest

from bench import BenchError
from bench.spec import TrialSpec
from bench.trial import run_trial


def spec(root, **kw) -> TrialSpec:
    return TrialSpec(run="r", suite="t", dataset="fixture", shots=kw.pop("shots", 2), seed=1, stack="zeroshot",
                     pretrained="none", data_root=str(root), **kw)


@pytest.fixture
def damaged_root(fixture_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(fixture_root, root)
    return root


def test_a_missing_image_names_the_file_and_the_fix(damaged_root):
    (damaged_root / "fixture" / "images" / "red" / "test_0.png").unlink()
    with pytest.raises(BenchError) as info:
        run_trial(spec(damaged_root))
    message = str(info.value)
    assert "red/test_0.png listed in the split is missing" in message and "bench data check" in message
    assert "\n" not in message


def test_a_corrupt_image_fails_the_trial_naming_the_file(damaged_root):
    (damaged_root / "fixture" / "images" / "green" / "test_1.png").write_bytes(b"not a png at all")
    with pytest.raises(BenchError, match=r"corrupt image file .*green/test_1.png"):
        run_trial(spec(damaged_root))


def test_shots_larger_than_a_class_take_the_whole_class_and_say_so(fixture_root):
    row = run_trial(spec(fixture_root, shots=50))
    assert row["n_train"] == 4 * 6  # every train image of every class
    assert json.loads(row["extras"])["classes_with_fewer_than_k"] == 4


def test_a_split_file_that_is_not_json_is_a_one_line_error(damaged_root):
    (damaged_root / "fixture" / "split_zhou_Fixture.json").write_text("{ nope")
    with pytest.raises(BenchError, match="is not a valid CoOp split"):
        run_trial(spec(damaged_root))
