"""Run folders of one-row Parquet files: ``<results>/<run>/trials/<trial_id>.parquet`` for a trial that
finished, ``<trial_id>.failed.parquet`` for one that failed, so that what is done and what failed is one
listing of ``trials/`` (runs written before failed rows had their own name are renamed once, by the next
`bench run`; ``<run>/layout.json`` records that a run's names carry the status).

Each trial writes its own file through a temporary name and an atomic rename, so concurrent trials
never collide and a half-written file is never read (readers skip names starting with '.'). The per-trial
files are the source of truth; ``<run>/compact.parquet`` holds the rows and kept predictions of the files it
was built from (name, size and modification time of each), so that a report reads a run as one file:
readers add the files it lacks and write a new one, atomically, whenever the listing shows a change.
``results`` may be a local folder or a pyarrow filesystem URI (e.g. ``s3://bucket/bench``). On an
object store a row is serialised in memory and sent as one PUT of the final key: the store makes the
object visible only once it is complete, so a failed PUT leaves no row at all, never half of one.
Per-trial artifacts are staged in a local folder and uploaded under ``<run>/artifacts/<trial_id>/``
before the row is written; the run lock is a local file (see ``RunFolder.lock``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from . import atomic
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
    # here: the columns protocols declare (Protocol.row_fields), see schema()
    ("n_train", pa.int64()), ("n_test", pa.int64()), ("trainable_params", pa.int64()),
    ("fit_seconds", pa.float64()), ("eval_seconds", pa.float64()), ("peak_mem_mb", pa.float64()),
    # test-time speed of the final classifier (bench.trial.measure_throughput); device in `device`
    ("infer_images_per_s", pa.float64()), ("infer_batch_size", pa.int64()), ("infer_images", pa.int64()),
    # the cost ledger (bench.cost): images decoded, encoder passes, their GFLOPs; by kind in `cost` (JSON)
    ("images_decoded", pa.int64()), ("encoder_forward", pa.int64()), ("encoder_backward", pa.int64()),
    ("encoder_gflops", pa.float64()), ("cost", pa.string()),
    ("variants", pa.string()),  # JSON: the named variants the stack uses, name -> {method, settings}
    # how the settings were chosen (bench.tune): fixed (also rows without the column), val-tuned, oracle, or a
    # search's trial; the search's budget and algorithm, the chosen (or sampled) settings as JSON, the cell
    ("selection", pa.string()), ("tune_budget", pa.int64()), ("tune_search", pa.string()),
    ("tuned", pa.string()), ("tune_cell", pa.string()), ("tune_trial", pa.int64()),
    ("device", pa.string()), ("precision", pa.string()), ("hostname", pa.string()),
    ("node_id", pa.string()), ("node_ip", pa.string()),  # the Ray node that ran the trial
    ("torch", pa.string()), ("open_clip", pa.string()), ("bench", pa.string()),
    ("started_at", _TS), ("finished_at", _TS), ("extras", pa.string()),
])


_PROTOCOL_COLUMNS_AFTER = "val_top1"  # the engine's scores, then the protocols' own


def schema() -> pa.Schema:
    """The row schema: the engine's columns with the numeric columns installed protocols declare after its
    scores (``Protocol.row_fields``), then the numeric row fields installed methods declare
    (``Method.row_fields``, e.g. a sparsity)."""
    from .protocols import row_fields
    from .registry import methods

    at = BASE_SCHEMA.get_field_index(_PROTOCOL_COLUMNS_AFTER) + 1
    engine = list(BASE_SCHEMA)
    by_protocols = [f for f in row_fields() if f not in BASE_SCHEMA.names]
    declared = sorted({f for m in methods().values() for f in m.row_fields} - set(BASE_SCHEMA.names) - set(by_protocols))
    return pa.schema([*engine[:at], *((f, pa.float64()) for f in by_protocols), *engine[at:],
                      *((f, pa.float64()) for f in declared)])


# A trial's test predictions (bench.trial.Predictions): per image of each evaluated set, in split order.
PREDICTION_SCHEMA = pa.schema([("eval_set", pa.string()), ("index", pa.int32()), ("label", pa.int32()),
                               ("predicted", pa.int32())])
FAILED_SUFFIX = ".failed.parquet"  # a failed trial's row file; a finished one's is <trial_id>.parquet
LAYOUT = "layout.json"  # present when failed rows are named so
COMPACT = "compact.parquet"
_COMPACT_KEY = b"bench.compact"
_SOURCE_COLUMNS = ["source_file", "source_size", "source_mtime_ns"]
_FILES_PER_GROUP = 1024  # row files per row group of the compacted file
# kept predictions in the compacted file: the evaluated set's name dictionary-encoded (read back as such)
_COMPACT_PREDICTIONS = pa.struct([pa.field("eval_set", pa.dictionary(pa.int32(), pa.string())),
                                  *(f for f in PREDICTION_SCHEMA if f.name != "eval_set")])


def _compact_meta() -> dict:
    return {"version": 2, "columns": schema().names}


def compact_schema() -> pa.Schema:
    """The compacted file's columns: the row schema, the row file each row came from, its kept predictions."""
    return pa.schema([*schema(), ("source_file", pa.string()), ("source_size", pa.int64()),
                      ("source_mtime_ns", pa.int64()), ("predictions", pa.list_(_COMPACT_PREDICTIONS))],
                     metadata={_COMPACT_KEY: json.dumps(_compact_meta()).encode()})


def _select(compact: pq.ParquetFile, sources: set[str], columns: list[str]) -> pa.Table:
    """``columns`` of the compacted rows whose source file is one of ``sources``."""
    table = compact.read(columns=[*columns, "source_file"])
    return table.filter(pc.is_in(table["source_file"], pa.array(sorted(sources), pa.string()))).select(columns)


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
            if not self._names_carry_status() and not self._row_files():
                self._record_layout()  # a new run: failed rows get their own name from the start
        except OSError as err:
            raise BenchError(f"results folder {self.location} is not writable ({err.strerror or _first_line(err)}); "
                             "pass --results with a folder you can write to") from None

    @contextlib.contextmanager
    def lock(self):
        """Hold the run for one `bench run` process; a second one is refused with a clear message.

        The lock (a ``filelock`` on ``<run>/.lock``; the holder's pid in ``.lock.pid`` beside it) is released
        by the OS when its holder dies (even by kill -9), and whoever takes it next removes the temporary
        files of trials that died mid-write. Object stores have no such lock: the lock file is local
        (``$BENCH_CACHE/locks``), so two `bench run` of one run on the same machine are refused, while on two
        machines both would run (rows stay one object per trial id, last one wins).
        """
        if self.is_local:
            path = Path(self.root) / ".lock"
        else:
            from .cache import default_cache_dir

            path = Path(default_cache_dir()) / "locks" / f"{hashlib.sha256(self.location.encode()).hexdigest()[:32]}.lock"
            path.parent.mkdir(parents=True, exist_ok=True)
        lock, holder_file = FileLock(path, timeout=0), path.with_name(f"{path.name}.pid")
        try:
            lock.acquire()
        except Timeout:
            holder = _read_text(holder_file) or "?"
            raise BenchError(f"run '{self.run}' is in use by another `bench run` (pid {holder}); wait for "
                             "it to finish or choose another --run") from None
        try:
            atomic.write_text(holder_file, str(os.getpid()))
            if self.is_local:
                for where in (self.trials, self.predictions, self.root):
                    for stale in Path(where).glob(f"{atomic.TEMP_PREFIX}*"):
                        stale.unlink(missing_ok=True)
            self._io("write", self._name_failed_rows)
            yield
        finally:
            holder_file.unlink(missing_ok=True)
            lock.release()

    def write_row(self, row: dict[str, Any]) -> None:
        """Write one trial's row; raises ``RowWriteError`` (one line) when the store refuses it. The row
        replaces the trial's earlier one, under either status."""
        row = {"schema_version": SCHEMA_VERSION, **row}
        columns = schema()
        table = pa.Table.from_pylist([{k: row.get(k) for k in columns.names}], schema=columns)
        ok = row.get("status") == "ok"
        final, other = (self.row_path(row["trial_id"], status) for status in (ok, not ok))

        def put() -> None:  # local: written beside and renamed; object store: one PUT of the whole row
            atomic.write_table(final, table, self.fs)
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(other)

        self._io("write", put, what=f"the row of trial {row['trial_id']}")

    def row_path(self, trial_id: str, ok: bool) -> str:
        """Where a trial's row is: ``<trial_id>.parquet`` when it finished, ``<trial_id>.failed.parquet`` else."""
        return f"{self.trials}/{trial_id}{'.parquet' if ok else FAILED_SUFFIX}"

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
        atomic.write_table(f"{self.predictions}/{trial_id}.parquet", table, self.fs)

    def read_predictions(self, trial_id: str) -> pd.DataFrame | None:
        """A trial's test predictions, or None for trials that did not keep them."""
        path = f"{self.predictions}/{trial_id}.parquet"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        return pq.read_table(path, filesystem=self.fs).to_pandas()

    # -- reading a run ------------------------------------------------------------------------------
    def read(self) -> pd.DataFrame:
        """All rows of the run (empty frame with the schema's columns when there are none).

        Rows come from ``compact.parquet`` where their files are unchanged since it was written, and from
        their own files otherwise; when those differ, a new compacted file is written (not an error when
        the location is read-only). A trial with both an ok and a failed row (a writer stopped between
        writing one and removing the other) counts as ok. Row files that cannot be read (cut short by a full
        disk or a partial copy) are moved aside to ``<run>/unreadable/``, never deleted, and named in one
        warning line; their trials count as not run, so the next `bench run` redoes them."""
        if not self.exists():
            return schema().empty_table().to_pandas()
        rows = self._io("read", self._read_rows).to_pandas()
        failed_twice = (rows["status"] != "ok") & rows["trial_id"].isin(rows.loc[rows["status"] == "ok", "trial_id"])
        return rows[~failed_twice].reset_index(drop=True) if failed_twice.any() else rows

    def _row_files(self) -> dict[str, pafs.FileInfo]:
        """The row files of ``trials/`` by name, from one listing (not temporary or hidden files)."""
        listed = self.fs.get_file_info(pafs.FileSelector(self.trials, allow_not_found=True))
        return {f.base_name: f for f in listed
                if f.type == pafs.FileType.File and not f.base_name.startswith((".", "_"))}

    def _compact(self) -> pq.ParquetFile | None:
        """The run's compacted file when it is there, whole, and has the current schema's columns."""
        path = f"{self.root}/{COMPACT}"
        try:
            if self.fs.get_file_info(path).type != pafs.FileType.File:
                return None
            compact = pq.ParquetFile(self.fs.open_input_file(path))
        except (pa.ArrowInvalid, OSError):
            return None
        meta = (compact.schema_arrow.metadata or {}).get(_COMPACT_KEY)
        return compact if meta and json.loads(meta) == _compact_meta() else None

    @staticmethod
    def _sources(compact: pq.ParquetFile | None) -> dict[str, tuple[int, int]]:
        """Row file name -> (size, modification time in ns) of every file the compacted file holds."""
        if compact is None:
            return {}
        got = compact.read(columns=_SOURCE_COLUMNS)
        return dict(zip(got["source_file"].to_pylist(),
                        zip(got["source_size"].to_pylist(), got["source_mtime_ns"].to_pylist())))

    def _fresh(self, files: dict[str, pafs.FileInfo], sources: dict[str, tuple[int, int]]) -> set[str]:
        return {name for name, info in files.items() if sources.get(name) == (info.size, info.mtime_ns)}

    def _read_rows(self) -> pa.Table:
        files, compact = self._row_files(), self._compact()
        sources = self._sources(compact)
        fresh = self._fresh(files, sources)
        new = [files[name] for name in sorted(files) if name not in fresh]
        kept = _select(compact, fresh, schema().names) if compact is not None else schema().empty_table()
        if not new and len(fresh) == len(sources):
            return kept
        added = self._write_compact(compact, fresh, new)
        return pa.concat_tables([kept, added]) if added.num_rows else kept

    def _write_compact(self, compact: pq.ParquetFile | None, fresh: set[str], new: list[pafs.FileInfo]) -> pa.Table:
        """Write a compacted file holding the ``fresh`` rows of the current one and the ``new`` files; return
        the rows of the new files (what could be read of them, the rest set aside)."""
        columns = compact_schema()
        with tempfile.TemporaryDirectory(prefix="bench-compact-") as staging:
            local = f"{staging}/{COMPACT}"
            added = []
            with pq.ParquetWriter(local, columns, compression="zstd") as writer:
                if compact is not None:
                    for group in range(compact.num_row_groups):
                        part = compact.read_row_group(group)
                        part = part.filter(pc.is_in(part["source_file"], pa.array(sorted(fresh), pa.string())))
                        if part.num_rows:
                            writer.write_table(part.cast(columns))
                kept = self._kept_predictions() if new else set()
                for start in range(0, len(new), _FILES_PER_GROUP):
                    part = self._compacted_rows(new[start:start + _FILES_PER_GROUP], kept)
                    if part.num_rows:
                        writer.write_table(part)
                        added.append(part.select(schema().names))
            try:
                self._publish(local)
            except OSError:  # a read-only location: the next reader compacts again
                pass
        return pa.concat_tables(added) if added else schema().empty_table()

    def _publish(self, local: str) -> None:
        """Put the staged compacted file in place in one step: a rename, or one upload of the whole file."""
        atomic.put_file(local, f"{self.root}/{COMPACT}", self.fs)

    def _kept_predictions(self) -> set[str]:
        listed = self.fs.get_file_info(pafs.FileSelector(self.predictions, allow_not_found=True))
        return {f.base_name for f in listed if f.type == pafs.FileType.File and not f.base_name.startswith(".")}

    def _compacted_rows(self, files: list[pafs.FileInfo], kept_predictions: set[str]) -> pa.Table:
        """The rows of ``files`` with their source and kept predictions (compact_schema); unreadable row
        files are set aside."""
        columns, row_columns, tables, torn = compact_schema(), schema(), [], []
        for info in files:
            try:
                rows = pq.read_table(info.path, filesystem=self.fs, schema=row_columns)
            except (pa.ArrowInvalid, OSError) as error:
                if not (self.is_local or isinstance(error, pa.ArrowInvalid) or not self._whole(info)):
                    raise  # a store that does not answer: not a file cut short
                torn.append(info)
                continue
            n = rows.num_rows
            kept = self._nested_predictions(rows["trial_id"][0].as_py()) \
                if n == 1 and f"{rows['trial_id'][0].as_py()}.parquet" in kept_predictions else None
            predictions = kept if kept is not None else pa.nulls(n, columns.field("predictions").type)
            tables.append(pa.Table.from_arrays(
                [*rows.columns, pa.array([info.base_name] * n, pa.string()), pa.array([info.size] * n, pa.int64()),
                 pa.array([info.mtime_ns] * n, pa.int64()), predictions], schema=columns))
        if torn:
            self._set_aside(torn)
        return pa.concat_tables(tables) if tables else columns.empty_table()

    def _nested_predictions(self, trial_id: str) -> pa.ListArray | None:
        """A trial's kept predictions as one list entry; None when its file cannot be read (the trial's
        cells then get no interval)."""
        try:
            got = pq.read_table(f"{self.predictions}/{trial_id}.parquet", filesystem=self.fs)
            got = got.select(PREDICTION_SCHEMA.names).cast(PREDICTION_SCHEMA)
        except (pa.ArrowInvalid, KeyError, OSError):
            return None
        values = pa.StructArray.from_arrays([c.combine_chunks().cast(f.type) for c, f in zip(got.columns,
                                                                                            _COMPACT_PREDICTIONS)],
                                            fields=list(_COMPACT_PREDICTIONS))
        return pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values)

    def prediction_batches(self) -> Iterator[pa.RecordBatch]:
        """(trial_id, predictions) of the compacted trials whose row files are unchanged, in batches; a
        trial that kept no predictions has a null list. Trials not in it: :meth:`read_predictions`."""
        compact = self._io("read", self._compact)
        if compact is None:
            return
        fresh = self._fresh(self._io("read", self._row_files), self._sources(compact))
        wanted = pa.array(sorted(fresh), pa.string())
        for batch in compact.iter_batches(batch_size=_FILES_PER_GROUP,
                                          columns=["trial_id", "source_file", "predictions"]):
            fresh_rows = pc.is_in(batch.column("source_file"), wanted)
            if not pc.all(fresh_rows).as_py():  # rows whose files changed since: read from those files
                batch = batch.filter(fresh_rows)
            if batch.num_rows:
                yield batch

    # -- resuming -----------------------------------------------------------------------------------
    def statuses(self) -> dict[str, bool]:
        """Trial id -> whether its row is ok, from the file names of one listing of ``trials/``.

        Files the compacted file does not hold as they are now are checked to end as a whole Parquet file
        does (a footer read each); those cut short are set aside (see :meth:`read`) and their trials count
        as not run. A run whose failed rows have no name of their own yet is read instead."""
        if not self._io("read", self._names_carry_status):
            rows = self.read()
            return {t: bool(ok) for t, ok in zip(rows["trial_id"], rows["status"] == "ok")}
        files = self._io("read", self._row_files)
        sources = self._sources(self._io("read", self._compact))
        torn = self._io("read", lambda: [info for name, info in files.items()
                                         if sources.get(name) != (info.size, info.mtime_ns) and not self._whole(info)])
        if torn:
            self._io("write", lambda: self._set_aside(torn))
        out: dict[str, bool] = {}
        for name in set(files) - {info.base_name for info in torn}:
            if name.endswith(FAILED_SUFFIX):
                out.setdefault(name[:-len(FAILED_SUFFIX)], False)
            else:
                out[name.removesuffix(".parquet")] = True
        return out

    def done_ids(self) -> set[str]:
        return {trial_id for trial_id, ok in self.statuses().items() if ok}

    def failed_ids(self) -> set[str]:
        return {trial_id for trial_id, ok in self.statuses().items() if not ok}

    def _whole(self, info: pafs.FileInfo) -> bool:
        """Whether a file ends as a Parquet file does: footer length, then the magic bytes."""
        if info.size is None or info.size < 12:
            return False
        with self.fs.open_input_file(info.path) as handle:  # an OSError here is the store's, not the file's
            tail = handle.read_at(8, info.size - 8)
        return tail[4:] == b"PAR1" and int.from_bytes(tail[:4], "little") + 12 <= info.size

    def _names_carry_status(self) -> bool:
        return self.fs.get_file_info(f"{self.root}/{LAYOUT}").type == pafs.FileType.File

    def _record_layout(self) -> None:
        atomic.write_text(f"{self.root}/{LAYOUT}",
                          json.dumps({"ok_rows": "<trial_id>.parquet", "failed_rows": f"<trial_id>{FAILED_SUFFIX}"}),
                          self.fs)

    def _name_failed_rows(self) -> None:
        """Give the failed rows of a run written before they had a name of their own that name, once."""
        if self._names_carry_status():
            return
        rows = self.read()
        for trial_id in set(rows.loc[rows["status"] != "ok", "trial_id"]):
            with contextlib.suppress(FileNotFoundError):
                self.fs.move(self.row_path(trial_id, True), self.row_path(trial_id, False))
        self._record_layout()

    def _set_aside(self, torn: list[pafs.FileInfo]) -> list[str]:
        """Move row files that do not parse to ``<run>/unreadable/``, saying so in one line; their names."""
        from .console import err

        moved = []
        for info in torn:
            aside = f"{self.root}/unreadable"
            self.fs.create_dir(aside, recursive=True)
            self.fs.move(info.path, f"{aside}/{info.base_name}.{uuid.uuid4().hex[:8]}")
            moved.append(info.base_name)
        if moved:
            err.print(f"warning: {len(moved)} unreadable row files of run '{self.run}' moved to {self.root}/unreadable "
                      f"({', '.join(moved[:3])}{', ...' if len(moved) > 3 else ''}); their trials will run again",
                      highlight=False, soft_wrap=True)
        return moved


class RowWriteError(BenchError):
    """The object store refused a read or a write (unreachable, no credentials, no bucket)."""


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


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


def chosen_run(results: str | Path, run: str | None) -> tuple[str, str]:
    """The run a report shows and how it was chosen: ``run`` as named, else the latest (and how many there are)."""
    if run is not None:
        return run, ""
    latest = latest_run(results)
    if latest is None:
        raise BenchError(f"no runs under {results}; run `bench run` first or pass --results")
    return latest, f" (latest of {len(list_runs(results))}; --run NAME)"
