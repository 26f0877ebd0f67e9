"""Start trials in an order that keeps every worker busy when trials share a learned stage.

``mask`` and ``coop+mask`` on the same data and seed learn the same masks (one stage key, see
:meth:`TrialSpec.stage_key`): whichever starts first learns them and the other restores them. Started
side by side, the second would hold a worker while it waits on the stage's lock. So a trial starts only
when none of its stages is being learned by a running trial; the one that learns a stage is preferred
(the shortest stack that has it, e.g. ``mask`` before ``coop+mask``), and its dependents start once it is
done. :class:`StageAwareSearcher` puts this order into Ray Tune as a searcher.
"""
from __future__ import annotations

from typing import Iterable

from ray.tune.search import Searcher

from .registry import parse_stack
from .spec import TrialSpec


def stage_keys(spec: TrialSpec) -> list[str]:
    """The cached stages a trial would learn or restore (its leading reusable methods)."""
    if not spec.cache_dir:
        return []
    keys = []
    for i, plugin in enumerate(parse_stack(spec.stack)):
        if not plugin.reusable():
            break
        keys.append(spec.stage_key(i))
    return keys


class StageOrder:
    """Hands out trials one at a time: :meth:`next` gives a trial that can start now without waiting on a
    stage another running trial learns (None: none can yet; :attr:`finished`: all handed out)."""

    def __init__(self, specs: Iterable[TrialSpec]):
        specs = list(specs)
        self.keys = {s.trial_id: stage_keys(s) for s in specs}
        users: dict[str, int] = {}
        for keys in self.keys.values():
            for k in keys:
                users[k] = users.get(k, 0) + 1
        # learners of widely shared stages first, and among those the shortest stack (cheapest learner)
        rank = lambda s: (-max((users[k] for k in self.keys[s.trial_id]), default=0),  # noqa: E731
                          len(s.stack.split("+")))
        self.pending = sorted(specs, key=rank)
        self.learning: dict[str, str] = {}  # stage key -> id of the running trial that learns it
        self.learnt: set[str] = set()

    @property
    def finished(self) -> bool:
        return not self.pending

    def next(self) -> TrialSpec | None:
        for i, spec in enumerate(self.pending):
            keys = self.keys[spec.trial_id]
            if not any(k in self.learning for k in keys):
                for k in keys:
                    if k not in self.learnt:
                        self.learning[k] = spec.trial_id
                return self.pending.pop(i)
        return None

    def done(self, trial_id: str) -> None:
        for k, learner in list(self.learning.items()):
            if learner == trial_id:
                del self.learning[k]
                self.learnt.add(k)  # learnt or failed: either way nobody waits on it any more


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
