"""Run one trial and always leave exactly one row for it: ``ok`` with metrics, or ``error`` with why."""
from __future__ import annotations

import datetime as dt
import functools
import socket
import traceback
from pathlib import Path
from typing import Any, Callable

from .errors import BenchError
from .results import RowWriteError, RunFolder
from .spec import TrialSpec
from .trial import plain_spec_fields, run_trial, spec_fields


def error_row(spec: TrialSpec, message: str, where: dict[str, Any] | None = None) -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc)
    return {**safe_spec_fields(spec), "status": "error", "error": message, "hostname": socket.gethostname(),
            **(where or {}), "started_at": now, "finished_at": now}


def safe_spec_fields(spec: TrialSpec) -> dict[str, Any]:
    try:
        return spec_fields(spec)
    except Exception:  # e.g. a plugin that no longer loads: keep what plain data we have
        return {**plain_spec_fields(spec), "trial_id": _id_or_none(spec)}


def _id_or_none(spec: TrialSpec) -> str | None:
    try:
        return spec.trial_id
    except Exception:
        return None


def execute_trial(spec: TrialSpec, progress: Callable[[str], None] = lambda m: None,
                  where: dict[str, Any] | None = None,
                  on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Run ``spec`` and write its row into the run folder; a failure becomes an error row.

    Every ``progress`` message also goes, timestamped, into the trial's ``artifacts/<trial_id>/log.txt``
    (one block per attempt, each opened by a line naming the trial and where it runs).
    ``where`` names the place that ran it (the Ray node's ``node_id`` and ``node_ip``) and goes into the row;
    ``on_epoch`` listens to the last method's epochs (:func:`bench.trial.run_trial`).
    The traceback of an unexpected failure is written next to the rows as ``<trial_id>.traceback.txt``.
    Artifacts reach the results location before the row does, so a row never points at missing files.
    Raises ``RowWriteError`` when the row itself cannot be stored (an object store that refuses the PUT).
    """
    folder = RunFolder(spec.results, spec.run)
    where = where or {}
    artifacts = folder.artifact_dir(spec.trial_id)
    log = TrialLog(artifacts / "log.txt")
    log.write(f"trial {spec.trial_id} ({spec.dataset}, {spec.shots}-shot, seed {spec.seed}, {spec.stack}) on "
              f"{socket.gethostname()} {where.get('node_ip', '')}".rstrip())
    progress = log.and_then(progress)
    try:
        row = {**spec_fields(spec), "hostname": socket.gethostname(), **where,
               **run_trial(spec, progress, artifact_dir=artifacts,
                          keep_predictions=functools.partial(folder.write_predictions, spec.trial_id),
                          on_epoch=on_epoch)}
    except BenchError as err:
        row = error_row(spec, str(err), where)
    except Exception as err:  # a bug or a resource problem inside one trial must not end the run
        row = error_row(spec, f"{type(err).__name__}: {err}".splitlines()[0][:500], where)
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / "traceback.txt").write_text(traceback.format_exc())
    log.write(f"{row['status']}: top1 {row.get('top1')}" if row["status"] == "ok" else f"error: {row['error']}")
    try:
        folder.publish_artifacts(spec.trial_id)
    except RowWriteError as err:
        row = error_row(spec, f"artifacts not saved: {err}", where)
    folder.write_row(row)
    return row


class TrialLog:
    """Appends timestamped lines to a trial's log file; a file that cannot be written never fails the trial."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, message: str) -> None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(f"{stamp} {message}\n")
        except OSError:
            pass

    def and_then(self, progress: Callable[[str], None]) -> Callable[[str], None]:
        def log_and_pass_on(message: str) -> None:
            self.write(message)
            progress(message)
        return log_and_pass_on
