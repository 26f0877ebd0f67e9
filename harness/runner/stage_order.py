"""Start trials in an order that keeps every worker busy when trials share a learned stage.

``mask`` and ``coop+mask`` on the same data and seed learn the same masks (one stage key, see
:meth:`TrialSpec.stage_key`): whichever starts first learns them and the other restores them. Started
side by side, the second would hold a worker while it waits on the stage's lock. So a trial starts only
when none of its stages is being learned by a running trial; the one that learns a stage is preferred
(the shortest stack that has it, e.g. ``mask`` before ``coop+mask``), and its dependents start once it is
done. The serial executor follows this order; on Ray, ``ray_callbacks.StageAwareSearcher``.
"""
from __future__ import annotations

from typing import Iterable

from ..spec import TrialSpec


def stage_keys(spec: TrialSpec) -> list[str]:
    """The cached stages a trial would learn or restore (its leading reusable methods)."""
    if not spec.cache_dir:
        return []
    keys = []
    for i, (plugin, _) in enumerate(spec.resolved.plugins):
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
