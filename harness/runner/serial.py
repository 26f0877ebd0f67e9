"""Trials one after another in this process, in stage order: the executor benchmarks and tests use (no Ray)."""
from __future__ import annotations

from ..spec import TrialSpec
from ..trial import execute_trial
from .stage_order import StageOrder


class SerialExecutor:
    """Runs each spec to its row in this process; a learner of a shared stage before the trials that reuse it."""

    def __call__(self, specs: list[TrialSpec], *, scheduler=None, callbacks=()) -> dict[str, int]:
        if scheduler is not None or callbacks:
            raise ValueError("the serial executor stops no trial early; run searches with Ray")
        counts = {"ok": 0, "error": 0, "lost": 0, "stopped": 0}
        order = StageOrder(specs)
        while not order.finished:
            spec = order.next()
            row = execute_trial(spec)
            order.done(spec.trial_id)
            counts["ok" if row["status"] == "ok" else "error"] += 1
        return counts
