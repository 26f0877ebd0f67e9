"""Run folders of one-row Parquet files: ``<results>/<run>/trials/<trial_id>.parquet``.

Each trial writes its own file through a temporary name and an atomic rename, so concurrent trials
never collide and a half-written file is never read (readers skip names starting with '.').
``results`` may be a local folder or a pyarrow filesystem URI (e.g. ``s3://bucket/bench``). On an
object store a row is serialised in memory and sent as one PUT of the final key: the store makes the
object visible only once it is complete, so a failed PUT leaves no row at all, never half of one.
Per-trial artifacts are staged in a local folder and uploaded under ``<run>/artifacts/<trial_id>/``
before the row is written; the run lock is a local file (see ``RunFolder.lock``).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
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
BASE_SCHEMA = pa.schema([
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
    ("fit_seconds", pa.float64()), ("eval_seconds", pa.float64()), ("peak_mem_mb", pa.float64()),
    # test-time speed of the final classifier (bench.trial.measure_throughput); device in `device`
    ("infer_images_per_s", pa.float64()), ("infer_batch_size", pa.int64()), ("infer_images", pa.int64()),
    # the cost ledger (bench.cost): images decoded, encoder passes, their GFLOPs; by kind in `cost` (JSON)
    ("images_decoded", pa.int64()), ("encoder_forward", pa.int64()), ("encoder_backward", pa.int64()),
    ("encoder_gflops", pa.float64()), ("cost", pa.string()),
    ("variants", pa.string()),  # JSON: the named variants the stack uses, name -> {method, settings}
    ("device", pa.string()), ("precision", pa.string()), ("hostname", pa.string()),
    ("node_id", pa.string()), ("node_ip", pa.string()),  # the Ray node that ran the trial
    ("torch", pa.string()), ("open_clip", pa.string()), ("bench", pa.string()),
    ("started_at", _TS), ("finished_at", _TS), ("extras", pa.string()),
])


def schema() -> pa.Schema:
    """The row schema: the engine's columns, then the numeric row fields installed methods declare
    (``Method.row_fields``, e.g. a sparsity)."""
    from .registry import methods

    declared = sorted({f for m in methods().values() for f in m.row_fields} - set(BASE_SCHEMA.names))
    return pa.schema([*BASE_SCHEMA, *((f, pa.float64()) for f in declared)])
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
            self.fs, base = open_uri(results)
            self.scheme = results.split("://", 1)[0]
        else:
            self.fs, base = pafs.LocalFileSystem(), str(Path(results).expanduser().resolve())
            self.scheme = None
        self.root = f"{base}/{run}"
        self.trials = f"{self.root}/trials"
        self.predictions = f"{self.root}/predictions"  # beside trials/, which is read as one dataset

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def location(self) -> str:
        """The run's place as a user writes it (``s3://bucket/prefix/run`` or a local path)."""
        return self.root if self.is_local else f"{self.scheme}://{self.root}"

    def exists(self) -> bool:
        return self._io("read", lambda: self.fs.get_file_info(self.trials).type == pafs.FileType.Directory)

    def artifact_dir(self, trial_id: str) -> Path:
        """A local folder for a trial's artifacts; on object stores a staging folder that
        ``publish_artifacts`` uploads to ``<run>/artifacts/<trial_id>/``."""
        if self.is_local:
            return Path(self.root) / "artifacts" / trial_id
        staging = hashlib.sha256(self.location.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / "bench-artifacts" / staging / trial_id

    def publish_artifacts(self, trial_id: str) -> None:
        """Upload a trial's staged artifacts to the object store (nothing to do for local runs)."""
        local = self.artifact_dir(trial_id)
        if self.is_local or not local.is_dir():
            return
        self._io("write", lambda: pafs.copy_files(str(local), f"{self.root}/artifacts/{trial_id}",
                                                  source_filesystem=pafs.LocalFileSystem(),
                                                  destination_filesystem=self.fs))
        shutil.rmtree(local, ignore_errors=True)

    def ensure(self) -> None:
        try:
            self.fs.create_dir(self.trials, recursive=True)
            probe = f"{self.trials}/.write-probe-{uuid.uuid4().hex}"
            with self.fs.open_output_stream(probe) as out:
                out.write(b"")
            self.fs.delete_file(probe)
        except OSError as err:
            raise BenchError(f"results folder {self.location} is not writable ({err.strerror or _first_line(err)}); "
                             "pass --results with a folder you can write to") from None

    @contextlib.contextmanager
    def lock(self):
        """Hold the run for one `bench run` process; a second one is refused with a clear message.

        The lock is released by the OS when its holder dies (even by kill -9), and whoever takes it next
        removes the temporary files of trials that died mid-write. Object stores have no such lock: the
        lock file is local (``$BENCH_CACHE/locks``), so two `bench run` of one run on the same machine are
        refused, while on two machines both would run (rows stay one object per trial id, last one wins).
        """
        if self.is_local:
            path = Path(self.root) / ".lock"
        else:
            from .cache import default_cache_dir

            path = Path(default_cache_dir()) / "locks" / f"{hashlib.sha256(self.location.encode()).hexdigest()[:32]}.lock"
            path.parent.mkdir(parents=True, exist_ok=True)
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
            if self.is_local:
                for stale in Path(self.trials).glob(".tmp-*"):
                    stale.unlink(missing_ok=True)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write_row(self, row: dict[str, Any]) -> None:
        """Write one trial's row; raises ``RowWriteError`` (one line) when the store refuses it."""
        row = {"schema_version": SCHEMA_VERSION, **row}
        columns = schema()
        table = pa.Table.from_pylist([{k: row.get(k) for k in columns.names}], schema=columns)
        final = f"{self.trials}/{row['trial_id']}.parquet"
        if self.is_local:
            tmp = f"{self.trials}/.tmp-{row['trial_id']}-{uuid.uuid4().hex}.parquet"
            pq.write_table(table, tmp, filesystem=self.fs)
            self.fs.move(tmp, final)  # a rename on local and shared file systems: atomic
            return
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue()

        def put() -> None:
            with self.fs.open_output_stream(final) as out:  # buffered until close: one PUT of the whole row
                out.write(data)

        self._io("write", put, what=f"the row of trial {row['trial_id']}")

    def _io(self, verb: str, action, what: str = "rows"):
        try:
            return action()
        except OSError as err:
            if self.is_local:
                raise
            raise RowWriteError(f"could not {verb} {what} {'to' if verb == 'write' else 'from'} {self.location} "
                                f"({_first_line(err)}); check the store and its credentials, then run the same "
                                "command again") from None

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
            return schema().empty_table().to_pandas()
        try:
            return self._io("read", self._table)
        except (pa.ArrowInvalid, OSError):
            if not self.set_aside_unreadable():
                raise
            return self._io("read", self._table)

    def _table(self) -> pd.DataFrame:
        dataset = pads.dataset(self.trials, format="parquet", filesystem=self.fs, schema=schema(),
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


class RowWriteError(BenchError):
    """The object store refused a read or a write (unreachable, no credentials, no bucket)."""


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def open_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and base path for ``uri``.

    S3 URIs get ``allow_delayed_open=true`` so that a small object is one PutObject request instead of a
    multipart upload; the endpoint of an S3-compatible store comes from ``AWS_ENDPOINT_URL`` (or
    ``?endpoint_override=host:port&scheme=http`` in the URI), credentials from the usual AWS variables.
    """
    if uri.startswith("s3://") and "allow_delayed_open" not in uri:
        uri += ("&" if "?" in uri else "?") + "allow_delayed_open=true"
    try:
        fs, base = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
        raise BenchError(f"cannot open results location {uri.split('?')[0]} ({_first_line(err)}); pass --results "
                         "a local folder or a URI such as s3://bucket/prefix") from None
    return fs, base.rstrip("/")


def list_runs(results: str | Path) -> list[str]:
    """Names of the runs under ``results`` (a local folder or a filesystem URI)."""
    if "://" not in str(results):
        return sorted(p.parent.name for p in Path(results).expanduser().glob("*/trials"))
    fs, base = open_uri(str(results))
    try:
        entries = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        return sorted(e.base_name for e in entries if e.type == pafs.FileType.Directory
                      and fs.get_file_info(f"{e.path}/trials").type == pafs.FileType.Directory)
    except OSError as err:
        raise BenchError(f"cannot list runs under {results} ({_first_line(err)})") from None


def latest_run(results: str | Path) -> str | None:
    """The run whose rows changed last (None when there is none)."""
    newest: tuple | None = None
    for run in list_runs(results):
        folder = RunFolder(results, run)
        files = folder.fs.get_file_info(pafs.FileSelector(folder.trials))
        stamp = max((f.mtime for f in files if f.mtime is not None), default=None)
        key = (stamp is not None, stamp or 0, run)
        newest = max(newest or key, key)
    return newest[2] if newest else None
