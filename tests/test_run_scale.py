"""Runs at scale: what is done and what failed from file names, a run read as one compacted file that follows
its per-trial files, and the bootstrap drawn for every cell of a test set at once with the same numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.report.intervals import PredictionScores, _cells, accuracy_intervals, cell_rng, gain_intervals, interval, \
    label_column, Resampler
from bench.report.tables import accuracy_tables, gain_rows, load_rows
from bench.results import COMPACT, FAILED_SUFFIX, LAYOUT, RunFolder

from fake_runs import write_fake_run


def row(trial_id: str, status: str = "ok", **more) -> dict:
    return {"trial_id": trial_id, "run": "r", "status": status, "shots": 4, **more}


# -- resume from names -------------------------------------------------------------------------------
def test_done_and_failed_come_from_the_names_of_one_listing(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path, "r")
    folder.ensure()
    folder.write_row(row("a", top1=50.0))
    folder.write_row(row("b", "error", error="boom"))
    names = sorted(p.name for p in Path(folder.trials).iterdir())
    assert names == ["a.parquet", f"b{FAILED_SUFFIX}"]

    def no_row_reads(*args, **kwargs):
        raise AssertionError("a row file was read")

    monkeypatch.setattr(pq, "read_table", no_row_reads)
    monkeypatch.setattr(pq, "ParquetFile", no_row_reads)
    assert folder.done_ids() == {"a"} and folder.failed_ids() == {"b"}
    monkeypatch.undo()
    folder.write_row(row("b", top1=10.0))  # the retried trial's row replaces its failed one
    assert sorted(p.name for p in Path(folder.trials).iterdir()) == ["a.parquet", "b.parquet"]
    assert folder.done_ids() == {"a", "b"} and folder.failed_ids() == set()


def test_an_ok_row_left_beside_a_failed_one_wins(tmp_path):
    folder = RunFolder(tmp_path, "r")
    folder.ensure()
    folder.write_row(row("a", "error", error="boom"))
    failed = Path(folder.trials) / f"a{FAILED_SUFFIX}"
    kept = failed.read_bytes()
    folder.write_row(row("a", top1=50.0))
    failed.write_bytes(kept)  # as if the writer stopped between writing the ok row and removing the failed one
    assert folder.done_ids() == {"a"} and folder.failed_ids() == set()
    rows = folder.read()
    assert list(rows.trial_id) == ["a"] and list(rows.status) == ["ok"]


def test_a_run_from_before_failed_rows_had_their_name_is_renamed_once(tmp_path):
    folder = RunFolder(tmp_path, "old")
    folder.ensure()
    folder.write_row(row("a", top1=50.0))
    folder.write_row(row("b", "error", error="boom"))
    (Path(folder.trials) / f"b{FAILED_SUFFIX}").rename(Path(folder.trials) / "b.parquet")  # the old layout
    (Path(folder.root) / LAYOUT).unlink()
    (Path(folder.root) / COMPACT).unlink(missing_ok=True)
    assert folder.done_ids() == {"a"} and folder.failed_ids() == {"b"}  # read, not guessed from names
    with folder.lock():
        pass
    assert (Path(folder.root) / LAYOUT).is_file()
    assert sorted(p.name for p in Path(folder.trials).iterdir()) == ["a.parquet", f"b{FAILED_SUFFIX}"]
    assert folder.done_ids() == {"a"} and folder.failed_ids() == {"b"}


# -- the compacted file ------------------------------------------------------------------------------
def test_the_compacted_file_follows_the_trial_files(tmp_path):
    folder = RunFolder(tmp_path, "r")
    folder.ensure()
    folder.write_row(row("a", top1=50.0))
    assert list(folder.read().trial_id) == ["a"]
    compact = Path(folder.root) / COMPACT
    first = compact.stat().st_mtime_ns
    assert list(folder.read().trial_id) == ["a"] and compact.stat().st_mtime_ns == first  # fresh: not rewritten

    folder.write_row(row("b", top1=60.0))
    (Path(folder.trials) / "a.parquet").unlink()
    rows = folder.read()
    assert list(rows.trial_id) == ["b"] and rows.top1.tolist() == [60.0]
    assert pq.read_table(compact, columns=["trial_id"])["trial_id"].to_pylist() == ["b"]
    folder.write_row(row("b", top1=70.0, extras='{"again": true}'))  # the same trial rewritten
    assert folder.read().top1.tolist() == [70.0]

    compact.write_bytes(compact.read_bytes()[:200])  # a compacted file cut short is rebuilt, not trusted
    assert folder.read().top1.tolist() == [70.0]
    assert pq.read_table(compact)["trial_id"].to_pylist() == ["b"]


def test_a_torn_row_file_that_the_compacted_file_lacks_is_set_aside(tmp_path, capsys):
    folder = RunFolder(tmp_path, "r")
    folder.ensure()
    folder.write_row(row("a", top1=50.0))
    folder.read()
    folder.write_row(row("b", top1=60.0))
    path = Path(folder.trials) / "b.parquet"
    path.write_bytes(path.read_bytes()[:-20])
    assert list(folder.read().trial_id) == ["a"]
    assert "1 unreadable row files" in capsys.readouterr().err
    assert [p.name.split(".")[0] for p in (Path(folder.root) / "unreadable").iterdir()] == ["b"]


def test_predictions_come_from_the_compacted_file_as_from_their_files(tmp_path):
    folder = write_fake_run(tmp_path, seeds=(1, 2, 3))
    rows = load_rows(str(tmp_path), "demo")
    ok = rows[rows.status == "ok"]
    batched = PredictionScores(folder.read_predictions, folder.prediction_batches)
    one_by_one = PredictionScores(folder.read_predictions)
    for r in ok.itertuples(index=False):
        labels, correct = batched.correct(r, "top1")
        assert labels.dtype == np.int32 and np.array_equal(labels, one_by_one.correct(r, "top1")[0])
        assert np.array_equal(correct, one_by_one.correct(r, "top1")[1])
    asked = []
    counting = PredictionScores(lambda t: asked.append(t), folder.prediction_batches)
    counting.correct(next(ok.itertuples(index=False)), "top1")
    assert asked == []  # every trial's predictions came in the batches


# -- the bootstrap, drawn at once --------------------------------------------------------------------
def reference_interval(scores: PredictionScores, cells, a, b, dataset, metric="top1", reps=2000, seed=0):
    """The interval as drawn before, one cell (or pair) at a time from the cell's own scores."""
    ma = scores.matrix(cells[(a, dataset)], metric)[1]
    values = ma if b is None else ma.astype(np.float32) - scores.matrix(cells[(b, dataset)], metric)[1].astype(np.float32)
    draws = Resampler(cell_rng(seed, dataset, metric), *values.shape, reps)
    return interval(100.0 * values.mean(), draws.replicates(values))


def test_intervals_drawn_at_once_equal_those_drawn_cell_by_cell(tmp_path, monkeypatch):
    folder = write_fake_run(tmp_path, seeds=(1, 2, 3, 4), error=False)
    rows = load_rows(str(tmp_path), "demo")
    ok = rows[rows.status == "ok"]
    gains = gain_rows(accuracy_tables(ok, 4)[4][0])
    monkeypatch.setattr("bench.report.intervals._STACK", 5)  # several products per test set
    scores = PredictionScores(folder.read_predictions, folder.prediction_batches)
    ci, acc = gain_intervals(ok, gains, scores), accuracy_intervals(ok, scores)
    cells = _cells(ok.assign(label=ok[label_column(ok)]))
    for name in gains.index:
        a, b = name.split(" vs ")
        for dataset in gains.columns.drop("Average"):
            assert ci.at[name, dataset] == reference_interval(scores, cells, a, b, dataset), (name, dataset)
    for label in acc.index:
        for dataset in acc.columns.drop("Average"):
            assert acc.at[label, dataset] == reference_interval(scores, cells, label, None, dataset)
    fresh = PredictionScores(folder.read_predictions)  # nothing cached: the same numbers again
    assert gain_intervals(ok, gains, fresh).equals(ci)
