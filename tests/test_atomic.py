"""bench.atomic: every write-then-rename of the engine, under one temporary-name convention."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import atomic


def test_files_are_whole_or_absent_and_temporaries_follow_the_convention(tmp_path):
    target = tmp_path / "a.json"
    assert atomic.temp_path(target).name.startswith(".tmp-a.json-")  # readers skip '.'; the run lock sweeps .tmp-*
    atomic.write_text(target, "one")
    with pytest.raises(RuntimeError), atomic.writing(target) as tmp:
        with open(tmp, "w") as handle:
            handle.write("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    table = pa.table({"x": [1, 2]})
    atomic.write_table(tmp_path / "t.parquet", table)
    assert pq.read_table(tmp_path / "t.parquet").equals(table)
    atomic.put_file(tmp_path / "t.parquet", tmp_path / "copy.parquet")
    assert (tmp_path / "copy.parquet").read_bytes() == (tmp_path / "t.parquet").read_bytes()


def test_a_folder_replaces_its_target_unless_told_to_keep_it(tmp_path):
    target = tmp_path / "stage"
    with atomic.folder(target) as tmp:
        (tmp / "row.json").write_text("1")
    with atomic.folder(target) as tmp:  # replaced
        (tmp / "row.json").write_text("2")
    assert (target / "row.json").read_text() == "2"
    with atomic.folder(target, keep=lambda t: (t / "row.json").is_file()) as tmp:  # kept: the new copy goes
        (tmp / "row.json").write_text("3")
    assert (target / "row.json").read_text() == "2"
    with pytest.raises(RuntimeError), atomic.folder(target) as tmp:
        raise RuntimeError("fill failed")
    assert (target / "row.json").read_text() == "2" and [p.name for p in tmp_path.iterdir()] == ["stage"]
