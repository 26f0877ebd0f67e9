"""Plugins that fail on purpose: one raises inside fit, one kills its own process; and a protocol of its own."""
import os

from bench import Method, Part
from bench.protocols import Protocol


class Boom(Method):
    name = "boom"
    description = "raises inside fit (a plugin bug)"
    changes = frozenset({Part.LOGIT_TERM})

    def fit(self, clf, ctx):
        raise RuntimeError("boom: a bug inside the plugin")


class Crash(Method):
    name = "crash"
    description = "kills its own process inside fit (out of memory, a segfault)"
    changes = frozenset({Part.LOGIT_TERM})

    def fit(self, clf, ctx):
        os._exit(137)


class WorstClass(Protocol):
    """A protocol from a plugin package: the usual top-1, and the accuracy of the class scored worst in a
    column of its own (no interval: it is no mean over images)."""

    name = "worst_class"
    description = "K shots per class; top-1 on the test split and the top-1 of its worst class"
    metrics = (("top1", "top-1 (%)"), ("worst_class_top1", "worst-class top-1 (%)"))
    row_fields = ("worst_class_top1",)
    eval_sets = {"top1": "test", "worst_class_top1": None}

    def extra_metrics(self, ctx, spec, top1, score):
        from bench.trial import evaluate

        seen = {}
        evaluate(ctx, "test", keep=lambda labels, predicted: seen.update(labels=labels, predicted=predicted))
        labels, predicted = seen["labels"], seen["predicted"]
        per_class = [100.0 * float((predicted[labels == c] == c).float().mean()) for c in labels.unique()]
        return {"worst_class_top1": min(per_class)}, {}
