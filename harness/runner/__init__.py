"""The runner: one `bench run` (or `bench tune`) from planned specs to rows in the run's folder.

It holds the run's lock, keeps to what is left to do (resume), hands those trials to an executor, and sums
up what the run's rows now say. An executor runs a list of specs, each to exactly one row
(:func:`bench.trial.execute_trial`), and returns counts (ok, error, lost, stopped):

* :class:`~bench.runner.ray_tune.RayExecutor`: Ray Tune on this machine or a cluster (`bench run`);
* :class:`~bench.runner.serial.SerialExecutor`: one trial after another in this process (benchmarks, tests).
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import pandas as pd

from ..console import err
from ..results import RunFolder
from ..spec import TrialSpec


class Executor(Protocol):
    def __call__(self, specs: list[TrialSpec], *, scheduler=None, callbacks=()) -> dict[str, int]:
        """Run ``specs``; ``scheduler`` and ``callbacks``: a search's early stopping (bench.tune)."""


def run_trials(folder: RunFolder, specs: list[TrialSpec], execute: Executor, *, retry_failed: bool = False,
               tuning=None) -> None:
    """Run what is left of ``specs`` (or, with ``retry_failed``, only those that failed) under the run's lock;
    with ``tuning`` (bench.tune.TunePlan), its searches and chosen settings too. Ctrl-C keeps what finished."""
    folder.ensure()
    with folder.lock():
        status = folder.statuses()  # trial id -> ok: one listing of the run
        todo = [s for s in specs if (status.get(s.trial_id) is False if retry_failed else not status.get(s.trial_id))]
        err.print(f"[bold]{folder.run}[/]: {len(specs)} trials, {len(specs) - len(todo)} already done or skipped, "
                  f"running {len(todo)} -> {folder.location}")
        if not todo and tuning is None:
            return
        try:
            if tuning is not None:
                tuning.run(todo, execute)
            else:
                execute(todo)
        except KeyboardInterrupt:
            err.print("interrupted: finished trials are kept")


@dataclasses.dataclass
class Summary:
    """What the run's rows say about the planned trials: their rows, counts, and the lines that say so."""

    rows: pd.DataFrame  # the rows of the planned trials
    ok: int
    failed: int
    left: int  # planned trials without a row (interrupted)
    lines: list[str]

    @property
    def complete(self) -> bool:
        return not (self.failed or self.left)


def summarise(folder: RunFolder, specs: list[TrialSpec]) -> Summary:
    ids = {s.trial_id for s in specs}
    every = folder.read()
    rows = every[every.trial_id.isin(ids)]
    ok, failed = int((rows.status == "ok").sum()), int((rows.status != "ok").sum())
    lines = []
    others = every[~every["trial_id"].isin(ids) & every["dataset"].isin({s.dataset for s in specs})
                   & every["stack"].isin({s.stack for s in specs})]
    if len(others):
        current = {s.dataset: s.dataset_fingerprint for s in specs}
        stale = int((others["dataset_fingerprint"].fillna("") != others["dataset"].map(current)).sum())
        lines.append(f"left out of this table: {len(others)} earlier rows of run '{folder.run}' for these datasets "
                     f"and stacks but other trials ({stale} made on another version of the data, "
                     f"{len(others) - stale} with other settings, shots, seeds, weights or method versions); "
                     "`bench report` shows them")
    short = rows.extras.fillna("").str.contains("classes_with_fewer_than_k")
    if short.any():
        lines.append(f"warning: {int(short.sum())} trials had classes with fewer than K train images; all their "
                     "images were used (as Dassl does)")
    left = len(ids) - len(rows)
    lines.append(f"{ok} of {len(ids)} trials ok, {failed} failed"
                 + (f", {left} not run — run the same command again to continue" if left else "")
                 + (f"; see `bench report --run {folder.run} --errors`, then rerun with --retry-failed" if failed
                    else ""))
    return Summary(rows, ok, failed, left, lines)
