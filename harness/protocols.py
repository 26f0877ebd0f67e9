"""Evaluation protocols, a closed registry: what a trial trains on, what it is scored on, which columns.

* ``fewshot``: K shots of every class; top-1 on the test split.
* ``base2new``: CoCoOp's base-to-new generalisation. K shots drawn from all classes, kept for the base
  half; top-1 on the base test images (``top1``), then the head is rebuilt for the new half's class names
  and scored on their test images (``top1_new``), and ``hm`` is their harmonic mean.
* ``shift``: train on the source dataset (ImageNet), then test on each target (its variants), scored over
  the target's own classes (``top1.<target>`` in ``extras``).
"""
from __future__ import annotations

from typing import Callable, ClassVar

from .data.classes import shift_label_map, subsample_classes
from .errors import BenchError
from .registry import suggest

Score = Callable[..., tuple[float, int]]  # score(split, select=None, name=eval set) -> (top-1 %, n images)


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0


class Protocol:
    name: ClassVar[str]
    description: ClassVar[str]
    # (row column, caption) pairs the report shows, in order
    metrics: ClassVar[tuple[tuple[str, str], ...]] = (("top1", "top-1 (%)"),)

    def check_stack(self, stack: str, plugins) -> None:
        """Refuse, at planning, a stack this protocol cannot evaluate."""

    def prepare(self, data):
        """The trial's training data from the few-shot split of the whole dataset."""
        return data

    def extra_metrics(self, ctx, spec, top1: float, score: Score) -> tuple[dict, dict]:
        """After ``top1`` on the prepared test split: (row fields, extras)."""
        return {}, {}


class FewShot(Protocol):
    name = "fewshot"
    description = "K shots per class; top-1 on the test split"


class BaseToNew(Protocol):
    name = "base2new"
    description = "train on the base half of the classes; top-1 on base and new classes, and their HM"
    metrics = (("top1", "base-class top-1 (%)"), ("top1_new", "new-class top-1 (%)"), ("hm", "harmonic mean"))

    def check_stack(self, stack: str, plugins) -> None:
        unable = [p.name for p in plugins if not getattr(p, "transfers_to_new_classes", True)]
        if unable:
            raise BenchError(f"stack '{stack}' cannot classify classes it was not trained on ({', '.join(unable)} "
                             "learns per-class parameters); leave it out of a base2new run")

    def prepare(self, data):
        return subsample_classes(data, "base")

    def extra_metrics(self, ctx, spec, top1: float, score: Score) -> tuple[dict, dict]:
        head = ctx.clf.head
        if not hasattr(head, "for_classes") or len(ctx.clf.logit_terms):
            raise BenchError(f"stack '{spec.stack}' cannot classify classes it was not trained on: base-to-new "
                             "needs a head built from class names")
        ctx.switch_data(subsample_classes(ctx.read.fewshot, "new"))
        ctx.clf.head = head.for_classes(ctx.data.classnames, ctx)
        new_top1, _ = score("test", name="new")
        return {"top1_new": new_top1, "hm": harmonic_mean(top1, new_top1)}, {}


class Shift(Protocol):
    name = "shift"
    description = "train on the source dataset; top-1 on each target dataset over the target's classes"

    def extra_metrics(self, ctx, spec, top1: float, score: Score) -> tuple[dict, dict]:
        source, out = ctx.data, {}
        for target in spec.shift_targets:
            data = ctx.read.targets[target]
            mapping = shift_label_map(source, data)
            ctx.switch_data(data)
            out[f"top1.{target}"], _ = score("test", mapping.select, name=target)
        ctx.switch_data(source)
        return {}, out


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (FewShot(), BaseToNew(), Shift())}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise BenchError(f"unknown protocol '{name}'{suggest(name, PROTOCOLS)}; protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
