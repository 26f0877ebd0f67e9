"""`bench run`'s terminal view: the overall bar and, under it, one line per running trial with the latest
progress message its method sent (epoch, loss) and the node it runs on.

On a terminal the view redraws in place. Elsewhere (CI logs, pipes) nothing can be redrawn, so it prints
plain lines instead, sparingly: one when a trial first reports, then at most one per trial every
``PLAIN_EVERY_S`` seconds.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, \
    TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..spec import TrialSpec

MAX_ROWS = 12  # running trials listed under the bar; the rest are counted
PLAIN_EVERY_S = 30.0


class RunEtaColumn(ProgressColumn):
    """Time left at the run's mean pace so far, counting down between trials: (time of the last trial's
    end / trials done) x trials left, less the time since that end. Trials end minutes apart: rich's own
    estimate (the rate over the last 30 s) goes blank or jumps between them."""

    def __init__(self, last_end: Callable[[int], float | None], clock: Callable[[], float]):
        super().__init__()
        self.last_end, self.clock = last_end, clock

    def render(self, task) -> Text:
        end = self.last_end(task.id)
        if not task.completed or end is None or task.start_time is None or task.total is None:
            return Text("-:--:--", style="progress.remaining")
        pace = (end - task.start_time) / task.completed
        left = pace * max(task.total - task.completed, 0) - (self.clock() - end)
        return Text(_duration(max(left, 0.0)), style="progress.remaining")


@dataclass
class RunningTrial:
    trial_id: str
    spec: TrialSpec
    started: float
    node: str = ""
    message: str = "waiting for a worker"
    printed: float | None = field(default=None)  # when its last plain line went out

    @property
    def label(self) -> str:
        s = self.spec
        return f"{s.dataset} {s.shots}-shot seed {s.seed} {s.stack}"


def short_node(where: dict) -> str:
    """The node's ip, or the start of its Ray node id when no ip came with the result."""
    return str(where.get("node_ip") or str(where.get("node_id") or "")[:8])


class RunProgress(Progress):
    def __init__(self, console: Console, *, max_rows: int = MAX_ROWS, plain_every_s: float = PLAIN_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.max_rows, self.plain_every_s, self.clock = max_rows, plain_every_s, clock
        self.running: dict[str, RunningTrial] = {}
        self._last_end: dict[int, float] = {}  # task id -> when a trial last counted towards it
        self._running_lock = threading.Lock()  # the display thread reads what the callback thread changes
        super().__init__(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), TextColumn("ETA"),
                         RunEtaColumn(self._last_end.get, clock), console=console, transient=False,
                         get_time=clock)

    @property
    def redraws(self) -> bool:
        return self.console.is_terminal and not self.console.is_dumb_terminal

    def update(self, task_id, *, advance: float | None = None, **fields) -> None:
        if advance:
            self._last_end[task_id] = self.clock()
        super().update(task_id, advance=advance, **fields)

    def trial_started(self, trial_id: str, spec: TrialSpec) -> None:
        with self._running_lock:
            self.running[trial_id] = RunningTrial(trial_id, spec, started=self.clock())

    def trial_progress(self, trial_id: str, spec: TrialSpec, message: str, where: dict) -> None:
        now = self.clock()
        with self._running_lock:
            trial = self.running.setdefault(trial_id, RunningTrial(trial_id, spec, started=now))
            trial.node, trial.message = short_node(where) or trial.node, message
            plain_line = not self.redraws and (trial.printed is None or now - trial.printed >= self.plain_every_s)
            if plain_line:
                trial.printed = now
        if self.redraws:
            self.refresh()  # every message that reached the driver is drawn at least once
        elif plain_line:
            self.console.print(f"trial {trial_id[:8]} {trial.label} on {trial.node or '?'}: {message}",
                               highlight=False, soft_wrap=True)

    def trial_finished(self, trial_id: str, spec: TrialSpec, top1: float | None = None,
                       error: str | None = None) -> None:
        """One line as a trial's row is written: its error (always: failures are seen as they happen), or,
        where nothing is redrawn (a pipe, a log), its top-1."""
        label = f"trial {trial_id[:8]} {spec.dataset} {spec.shots}-shot seed {spec.seed} {spec.stack}"
        if error:
            first = next((line for line in error.splitlines() if line.strip()), error)
            self.console.print(Text(f"{label} failed: {first[:300]}", style="red"), soft_wrap=True)
        elif not self.redraws:
            shown = f"top-1 {top1:.2f}" if isinstance(top1, (int, float)) and top1 == top1 else "done"
            self.console.print(f"{label}: {shown}", highlight=False, soft_wrap=True, markup=False)

    def trial_ended(self, trial_id: str) -> None:
        with self._running_lock:
            self.running.pop(trial_id, None)

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        with self._running_lock:
            trials = sorted(self.running.values(), key=lambda t: t.started)
        if trials and self.redraws:
            yield self._running_table(trials)

    def _running_table(self, trials: list[RunningTrial]) -> Table:
        table = Table(box=None, show_edge=False, pad_edge=False, header_style="dim", expand=False)
        for name in ("trial", "dataset", "shots", "seed", "stack", "node", "time", "latest"):
            table.add_column(name, no_wrap=name != "latest", overflow="ellipsis")
        now = self.clock()
        for t in trials[:self.max_rows]:
            s = t.spec
            table.add_row(t.trial_id[:8], s.dataset, str(s.shots), str(s.seed), s.stack, t.node or "-",
                          _duration(now - t.started), Text(t.message))
        if len(trials) > self.max_rows:
            table.add_row("", Text(f"... and {len(trials) - self.max_rows} more running", style="dim"))
        return table


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"
