"""Writing a file or a folder so that a reader sees the old one or the whole new one, never half of one.

Everything is written under a temporary name beside its target, ``.tmp-<name>-<random>``, and renamed
into place (an atomic step on local and shared file systems). Readers skip names that start with '.', and
the run lock (``RunFolder.lock``) removes the ``.tmp-*`` a writer killed mid-write left in a run folder.
On a pyarrow filesystem other than the local one (an object store) a file is sent as one upload of the
whole content: the store shows the object only once it is complete.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

TEMP_PREFIX = ".tmp-"


def temp_path(target: str | Path) -> Path:
    """A fresh temporary name beside ``target``, under the one convention (``.tmp-<name>-<random>``)."""
    target = Path(target)
    return target.with_name(f"{TEMP_PREFIX}{target.name}-{uuid.uuid4().hex}")


def _remote(fs) -> bool:
    import pyarrow.fs as pafs

    return fs is not None and not isinstance(fs, pafs.LocalFileSystem)


@contextlib.contextmanager
def writing(target: str | Path, fs=None) -> Iterator[str]:
    """Yield a local path to write ``target``'s content to; when the block ends without an error it is put
    in place (renamed, or uploaded in one piece to ``fs``), else removed."""
    if _remote(fs):
        with tempfile.TemporaryDirectory(prefix="bench-upload-") as staging:
            local = os.path.join(staging, Path(target).name)
            yield local
            put_file(local, target, fs)
        return
    tmp = temp_path(target)
    try:
        yield str(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(target: str | Path, data: bytes, fs=None) -> None:
    if _remote(fs):
        with fs.open_output_stream(str(target)) as out:  # buffered until close: one upload of the whole file
            out.write(data)
        return
    with writing(target) as tmp:
        Path(tmp).write_bytes(data)


def write_text(target: str | Path, text: str, fs=None) -> None:
    write_bytes(target, text.encode("utf-8"), fs)


def write_table(target: str | Path, table, fs=None, **options) -> None:
    """A Parquet file (``options`` go to ``pyarrow.parquet.write_table``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if _remote(fs):  # serialised in memory: one upload
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **options)
        write_bytes(target, sink.getvalue().to_pybytes(), fs)
        return
    with writing(target) as tmp:
        pq.write_table(table, tmp, **options)


def put_file(local: str | Path, target: str | Path, fs=None) -> None:
    """Copy the local file ``local`` to ``target`` (its content whole, or not at all)."""
    if _remote(fs):
        write_bytes(target, Path(local).read_bytes(), fs)
        return
    with writing(target) as tmp:
        shutil.copyfile(local, tmp)


@contextlib.contextmanager
def folder(target: str | Path, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a new empty folder to fill; when the block ends without an error it takes ``target``'s place.

    An existing ``target`` is replaced, unless ``keep(target)`` says it is to be kept (e.g. another process
    finished the same folder first): then the new one is discarded. Local paths only."""
    target = Path(target)
    tmp = temp_path(target)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if target.exists():
            if keep is not None and keep(target):
                return
            _remove(target)
        try:
            os.replace(tmp, target)
        except OSError:  # someone else put a folder there meanwhile
            if keep is None or not keep(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove(target: Path) -> None:
    """Take a folder away in one step (renamed under a temporary name), then delete it."""
    aside = temp_path(target)
    try:
        os.rename(target, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)
