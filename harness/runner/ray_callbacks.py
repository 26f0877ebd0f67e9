"""Ray Tune's side of a run (imported only once Ray's environment is set): the searcher that hands trials out
in stage order, and the callback behind `bench run`'s progress view.

A trial sends two kinds of results through Tune's channel: progress results (``final`` false, a
``progress`` message) while it runs, and one final result (``final`` true) once its row is written.
Only final results count towards the bar."""
from __future__ import annotations

from typing import Iterable

import pyarrow.fs as pafs
from ray import tune
from ray.tune.search import Searcher

from ..errors import BenchError
from ..results import RowWriteError, RunFolder
from ..spec import TrialSpec
from .live_view import RunProgress
from .stage_order import StageOrder


class ProgressCallback(tune.Callback):
    """Advances the progress bar and keeps its list of running trials; records trials whose worker died
    without writing a row, and rows the driver cannot see (a store that refused them, or a --results path
    that is not shared by every node)."""

    def __init__(self, bar: RunProgress, task, folder: RunFolder, counts: dict[str, int]):
        self.bar, self.task, self.folder, self.counts = bar, task, folder, counts
        self._ids: dict[str, tuple[str, TrialSpec]] = {}  # Tune's trial id -> bench's id and spec
        self._ended: set[str] = set()  # Tune's ids of trials that sent their final result
        self._folders: dict[tuple, RunFolder] = {}  # (results, run) of a trial -> where its row goes
        self.unsaved: list[str] = []  # one-line reasons rows could not be stored anywhere
        self.unseen: list[str] = []  # trial ids reported ok whose row the driver does not find

    def __getstate__(self):  # Tune pickles its callbacks with the experiment state; ours are driver-only
        return {}

    def _spec(self, trial) -> tuple[str, TrialSpec]:
        """The trial's bench id and spec, worked out once (the id hashes the resolved settings)."""
        if trial.trial_id not in self._ids:
            spec = TrialSpec.from_dict(trial.config["spec"])
            self._ids[trial.trial_id] = (spec.trial_id, spec)
        return self._ids[trial.trial_id]

    def _advance(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self.bar.update(self.task, advance=1, failed=self.counts["error"] + self.counts["lost"])

    def _folder(self, spec: TrialSpec) -> RunFolder:
        """Where the trial's row goes: the run's folder, or another one (a search's trials, bench.tune)."""
        key = (spec.results, spec.run)
        if key not in self._folders:
            self._folders[key] = RunFolder(*key)
        return self._folders[key]

    def _record_error(self, trial, message: str, where: dict | None = None) -> None:
        """Write an error row from the driver, unless the trial's row is already there."""
        trial_id, spec = self._spec(trial)
        folder = self._folder(spec)
        try:
            if trial_id not in folder.done_ids():
                from ..rows import error_row

                folder.write_row(error_row(spec, message, where))
        except RowWriteError as err:
            self.unsaved.append(str(err))

    def on_trial_start(self, iteration, trials, trial, **info):
        self.bar.trial_started(*self._spec(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        where = {k: result[k] for k in ("node_id", "node_ip") if k in result}
        trial_id, spec = self._spec(trial)
        if not result.get("final"):
            self.bar.trial_progress(trial_id, spec, str(result.get("progress", "")), where)
            return
        self.bar.trial_ended(trial_id)
        self._ended.add(trial.trial_id)
        if result.get("unsaved"):
            message = f"row not saved on node {where.get('node_ip', '?')}: {result['unsaved']}"
            self._record_error(trial, message, where)
            self.bar.trial_finished(trial_id, spec, error=message)
            self._advance("error")
            return
        self.bar.trial_finished(trial_id, spec, top1=result.get("top1"),
                                error=None if result.get("ok") else result.get("error") or "no error recorded")
        try:
            folder = self._folder(spec)
            seen = folder.fs.get_file_info(folder.row_path(trial_id, bool(result.get("ok")))).type == pafs.FileType.File
        except OSError:
            seen = True  # the store is unreachable from here: the final read reports it
        if not seen:
            self.unseen.append(trial_id)
        self._advance("ok" if result.get("ok") else "error")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.bar.trial_ended(self._spec(trial)[0])
        if trial.trial_id not in self._ended:  # stopped early by a scheduler (a search's ASHA)
            self._ended.add(trial.trial_id)
            self._advance("stopped")

    def on_trial_recover(self, iteration, trials, trial, **info):
        trial_id, spec = self._spec(trial)
        self.bar.trial_ended(trial_id)  # back in the queue until Tune starts it again
        if local_node_stopped():
            return  # nowhere to reschedule: the run ends with one line that says so
        self.bar.console.print(f"trial {trial_id} ({spec.dataset}, {spec.shots}-shot, seed {spec.seed}, "
                               f"{spec.stack}): {_what_happened(trial)}; rescheduled "
                               f"(attempt {trial.num_failures + 1} of {trial.max_failures + 1})", highlight=False,
                               soft_wrap=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        trial_id, spec = self._spec(trial)
        self.bar.trial_ended(trial_id)
        message = f"{_what_happened(trial)} ({trial.num_failures} attempts); rerun with --retry-failed"
        self._record_error(trial, message)
        self.bar.trial_finished(trial_id, spec, error=message)
        self._advance("lost")

    def raise_problems(self) -> None:
        if self.unsaved:
            raise RowWriteError(f"{len(self.unsaved)} rows could not be saved; first: {self.unsaved[0]}")
        if self.unseen:
            raise BenchError(f"{len(self.unseen)} trials finished on other nodes but their rows are not under "
                             f"{self.folder.location}: make --results a path every node sees (a shared file "
                             "system) or an object store URI such as s3://bucket/prefix")


def _what_happened(trial) -> str:
    """A dead process or node (Ray's actor error), or an exception that escaped the trainable (a bug)."""
    from ray.exceptions import RayActorError

    err = trial.get_pickled_error()
    if err is None or isinstance(err, RayActorError):
        return "trial process died (killed, out of memory, or its node was lost)"
    cause = getattr(err, "cause", None) or err
    return f"trial raised {type(cause).__name__}: {str(cause).strip().splitlines()[-1][:300] if str(cause).strip() else ''}"


class StageAwareSearcher(Searcher):
    """Ray Tune searcher over a fixed list of trials, in :class:`StageOrder`."""

    def __init__(self, specs: Iterable[TrialSpec], cpus: float):
        super().__init__()
        self.order = StageOrder(specs)
        self.cpus = cpus
        self.running: dict[str, str] = {}  # Tune's trial id -> bench trial id

    def suggest(self, trial_id: str):
        if self.order.finished:
            return Searcher.FINISHED
        spec = self.order.next()
        if spec is None:
            return None  # Tune asks again once a running trial completes
        self.running[trial_id] = spec.trial_id
        return {"spec": spec.to_dict(), "cpus": self.cpus}

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        if trial_id in self.running:
            self.order.done(self.running.pop(trial_id))


def local_node_stopped() -> bool:
    """Whether the Ray node this process started has stopped (never, for a driver that joined a cluster)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # a joined cluster's driver starts no head
    return node is not None and node.is_head() and not node.remaining_processes_alive()
