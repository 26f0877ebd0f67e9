"""Run folders of one-row Parquet files: ``<results>/<run>/trials/<trial_id>.parquet``.

Each trial writes its own file through a temporary name and an atomic rename, so concurrent trials
never collide and a half-written file is never read (readers skip names starting with '.').
``results`` may be a local folder or a pyarrow filesystem URI (e.g. ``s3://bucket/bench``).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import BenchError

SCHEMA_VERSION = 2
_TS = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([
    ("schema_version", pa.int32()),
    ("run", pa.string()), ("trial_id", pa.string()), ("suite", pa.string()), ("protocol", pa.string()),
    ("dataset", pa.string()), ("shots", pa.int32()), ("seed", pa.int32()), ("stack", pa.string()),
    ("model", pa.string()), ("pretrained", pa.string()),
    ("data_fingerprint", pa.string()), ("dataset_fingerprint", pa.string()), ("weights_fingerprint", pa.string()),
    ("hparams", pa.string()), ("settings", pa.string()),
    ("status", pa.string()), ("error", pa.string()),
    ("top1", pa.float64()), ("val_top1", pa.float64()),
    ("top1_new", pa.float64()), ("hm", pa.float64()),  # base-to-new protocol only
    ("n_train", pa.int64()), ("n_test", pa.int64()), ("trainable_params", pa.int64()),
    ("mask_sparsity", pa.float64()), ("mask_sparsity_encoder", pa.float64()),
    ("fit_seconds", pa.float64()), ("eval_seconds", pa.float64()), ("peak_mem_mb", pa.float64()),
    # test-time speed of the final classifier (bench.trial.measure_throughput); device in `device`
    ("infer_images_per_s", pa.float64()), ("infer_batch_size", pa.int64()), ("infer_images", pa.int64()),
    ("variants", pa.string()),  # JSON: the named variants the stack uses, name -> {method, settings}
    ("device", pa.string()), ("hostname", pa.string()),
    ("torch", pa.string()), ("open_clip", pa.string()), ("bench", pa.string()),
    ("started_at", _TS), ("finished_at", _TS), ("extras", pa.string()),
])
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_run_name(run: str) -> str:
    if not _RUN_NAME.match(run) or ".." in run:
        raise BenchError(f"bad run name '{run}': use letters, digits, '.', '_' and '-' (no slashes)")
    return run


class RunFolder:
    """One run's folder of trial rows (and per-trial artifacts such as saved masks)."""

    def __init__(self, results: str | Path, run: str):
        self.run = check_run_name(run)
        results = str(results)
        if "://" in results:
            self.fs, base = pafs.FileSystem.from_uri(results)
        else:
            self.fs, base = pafs.LocalFileSystem(), str(Path(results).expanduser().resolve())
        self.root = f"{base}/{run}"
        self.trials = f"{self.root}/trials"
        self.predictions = f"{self.root}/predictions"  # beside trials/, which is read as one dataset

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.trials).type == pafs.FileType.Directory

    def artifact_dir(self, trial_id: str) -> Path | None:
        """A local folder for a trial's artifacts (None on object stores)."""
        return Path(self.root) / "artifacts" / trial_id if self.is_local else None

    def ensure(self) -> None:
        try:
            self.fs.create_dir(self.trials, recursive=True)
            probe = f"{self.trials}/.write-probe-{uuid.uuid4().hex}"
            with self.fs.open_output_stream(probe) as out:
                out.write(b"")
            self.fs.delete_file(probe)
        except OSError as err:
            raise BenchError(f"results folder {self.root} is not writable ({err.strerror or err}); "
                             "pass --results with a folder you can write to") from None

    @contextlib.contextmanager
    def lock(self):
        """Hold the run for one `bench run` process; a second one is refused with a clear message.

        The lock is released by the OS when its holder dies (even by kill -9), and whoever takes it next
        removes the temporary files of trials that died mid-write.
        """
        if not self.is_local:  # object stores: no locks; one file per trial id keeps rows exactly-once
            yield
            return
        path = Path(self.root) / ".lock"
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "?"
                raise BenchError(f"run '{self.run}' is in use by another `bench run` (pid {holder}); wait for "
                                 "it to finish or choose another --run") from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            for stale in Path(self.trials).glob(".tmp-*"):
                stale.unlink(missing_ok=True)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write_row(self, row: dict[str, Any]) -> None:
        row = {"schema_version": SCHEMA_VERSION, **row}
        table = pa.Table.from_pylist([{k: row.get(k) for k in SCHEMA.names}], schema=SCHEMA)
        final = f"{self.trials}/{row['trial_id']}.parquet"
        tmp = f"{self.trials}/.tmp-{row['trial_id']}-{uuid.uuid4().hex}.parquet"
        pq.write_table(table, tmp, filesystem=self.fs)
        self.fs.move(tmp, final)  # a rename on local and shared file systems: atomic

    def write_predictions(self, trial_id: str, table: pa.Table) -> None:
        """Keep a trial's test predictions (atomically, like rows); written before its row."""
        self.fs.create_dir(self.predictions, recursive=True)
        tmp = f"{self.predictions}/.tmp-{trial_id}-{uuid.uuid4().hex}.parquet"
        pq.write_table(table, tmp, filesystem=self.fs)
        self.fs.move(tmp, f"{self.predictions}/{trial_id}.parquet")

    def read_predictions(self, trial_id: str) -> pd.DataFrame | None:
        """A trial's test predictions, or None for trials that did not keep them."""
        path = f"{self.predictions}/{trial_id}.parquet"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        return pq.read_table(path, filesystem=self.fs).to_pandas()

    def read(self) -> pd.DataFrame:
        """All rows of the run (empty frame with the schema's columns when there are none).

        Row files that cannot be read (cut short by a full disk or a partial copy) are moved aside to
        ``<run>/unreadable/``, never deleted, and named in one warning line; their trials count as not
        run, so the next `bench run` redoes them."""
        if not self.exists():
            return SCHEMA.empty_table().to_pandas()
        try:
            return self._table()
        except (pa.ArrowInvalid, OSError):
            if not self.set_aside_unreadable():
                raise
            return self._table()

    def _table(self) -> pd.DataFrame:
        dataset = pads.dataset(self.trials, format="parquet", filesystem=self.fs, schema=SCHEMA,
                               exclude_invalid_files=False)
        return dataset.to_table().to_pandas()

    def set_aside_unreadable(self) -> list[str]:
        """Move row files that do not parse to ``<run>/unreadable/``; return their names."""
        from .console import err

        moved = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.trials)):
            if info.type != pafs.FileType.File or info.base_name.startswith((".", "_")):
                continue
            try:
                with self.fs.open_input_file(info.path) as handle:
                    pq.read_table(handle)
            except (pa.ArrowInvalid, OSError):
                aside = f"{self.root}/unreadable"
                self.fs.create_dir(aside, recursive=True)
                self.fs.move(info.path, f"{aside}/{info.base_name}.{uuid.uuid4().hex[:8]}")
                moved.append(info.base_name)
        if moved:
            err.print(f"warning: {len(moved)} unreadable row files of run '{self.run}' moved to {self.root}/unreadable "
                      f"({', '.join(moved[:3])}{', ...' if len(moved) > 3 else ''}); their trials will run again",
                      highlight=False, soft_wrap=True)
        return moved

    def done_ids(self) -> set[str]:
        rows = self.read()
        return set(rows.loc[rows["status"] == "ok", "trial_id"])

    def failed_ids(self) -> set[str]:
        rows = self.read()
        return set(rows.loc[rows["status"] != "ok", "trial_id"])


def list_runs(results: str | Path) -> list[str]:
    return sorted(p.parent.name for p in Path(results).expanduser().glob("*/trials"))
