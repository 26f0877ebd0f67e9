"""Run folders: atomic one-row files, resume bookkeeping, schema."""
from __future__ import annotations

import pytest

from bench import BenchError
from bench.results import RunFolder, list_runs, schema


def test_rows_round_trip_and_temp_files_are_never_read(tmp_path):
    folder = RunFolder(tmp_path, "r1")
    folder.ensure()
    folder.write_row({"trial_id": "a", "run": "r1", "status": "ok", "top1": 50.0, "shots": 4})
    folder.write_row({"trial_id": "b", "run": "r1", "status": "error", "error": "boom", "shots": 4})
    # a dead writer's leftover must be ignored
    (tmp_path / "r1" / "trials" / ".tmp-c-123.parquet").write_bytes(b"half a file")
    rows = folder.read()
    assert list(rows.columns) == schema().names
    assert sorted(rows.trial_id) == ["a", "b"]
    assert folder.done_ids() == {"a"} and folder.failed_ids() == {"b"}
    # rewriting a trial replaces its row (one file per trial id)
    folder.write_row({"trial_id": "b", "run": "r1", "status": "ok", "top1": 10.0, "shots": 4})
    assert folder.done_ids() == {"a", "b"} and len(folder.read()) == 2
    assert list_runs(tmp_path) == ["r1"]


def test_run_names_cannot_escape_the_results_folder(tmp_path):
    for bad in ("../x", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(BenchError, match="bad run name"):
            RunFolder(tmp_path, bad)


def test_unwritable_results_folder_is_a_user_error(tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    folder = RunFolder(target, "r")
    try:
        import os

        if os.geteuid() == 0:  # root ignores permission bits: use a path below a regular file instead
            (tmp_path / "file").write_text("")
            folder = RunFolder(tmp_path / "file", "r")
        with pytest.raises(BenchError, match="not writable"):
            folder.ensure()
    finally:
        target.chmod(0o700)


def test_empty_run_reads_as_empty_frame(tmp_path):
    rows = RunFolder(tmp_path, "none").read()
    assert rows.empty and list(rows.columns) == schema().names
