"""Evaluation protocols, found through the ``bench.protocols`` entry points (bench's own below): what a trial
trains on, what it is scored on, and everything the rest of bench needs to know of that — the row columns it
adds, the evaluated set behind each metric (intervals), the report's table rule, how an old row without a
``protocol`` is recognised, the captions. Results, report and intervals ask the protocols; they name none.

* ``fewshot``: K shots of every class; top-1 on the test split.
* ``base2new``: CoCoOp's base-to-new generalisation. K shots drawn from all classes, kept for the base
  half; top-1 on the base test images (``top1``), then the head is rebuilt for the new half's class names
  and scored on their test images (``top1_new``), and ``hm`` is their harmonic mean.
* ``shift``: train on the source dataset (ImageNet), then test on each target (its variants), scored over
  the target's own classes (``top1.<target>`` in ``extras``); the report shows each target as a column.
"""
from __future__ import annotations

import json
from typing import Callable, ClassVar

from .data.classes import shift_label_map, subsample_classes
from .errors import BenchError
from .units import NotAUnit, Registry

Score = Callable[..., tuple[float, int]]  # score(split, select=None, name=eval set) -> (top-1 %, n images)
DEFAULT = "fewshot"  # a spec's and a suite's protocol unless they name one
# A report row scored on another dataset than its trial trained on (a protocol's expanded rows) names that
# training dataset here; the report puts such columns after the others.
TRAINED_ON = "trained_on"


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0


class Protocol:
    name: ClassVar[str]
    description: ClassVar[str]
    # (row column, caption) pairs the report shows, in order
    metrics: ClassVar[tuple[tuple[str, str], ...]] = (("top1", "top-1 (%)"),)
    # numeric columns of its own in the row schema (filled by extra_metrics)
    row_fields: ClassVar[tuple[str, ...]] = ()
    # metric -> the evaluated set whose kept predictions give its intervals (absent or None: no interval)
    eval_sets: ClassVar[dict[str, str | None]] = {"top1": "test"}

    def check_stack(self, stack: str, plugins) -> None:
        """Refuse, at planning, a stack this protocol cannot evaluate."""

    def prepare(self, data):
        """The trial's training data from the few-shot split of the whole dataset."""
        return data

    def extra_metrics(self, ctx, spec, top1: float, score: Score) -> tuple[dict, dict]:
        """After ``top1`` on the prepared test split: (row fields, extras)."""
        return {}, {}

    # -- what the report asks ------------------------------------------------------------------------
    def recognises(self, row) -> bool:
        """Whether a row written before rows carried their protocol is one of this protocol's."""
        return False

    def expand(self, rows):
        """More report rows made from this protocol's ``rows`` (a DataFrame), as records with the rows'
        columns (and :data:`TRAINED_ON`), e.g. one per dataset it was also scored on; or None."""
        return None

    def tables(self, rows, shots: int | None, metric: str, accuracy_tables):
        """The report's tables of ``metric`` by this protocol's published convention ({shots: (mean, std)}),
        or None for the plain mean over seeds (``accuracy_tables(rows, shots, metric)``)."""
        return None

    def averaged(self, rows, columns: list[str]) -> list[str]:
        """The dataset columns a table's Average spans (its value and its interval): all of them."""
        return columns


class FewShot(Protocol):
    name = "fewshot"
    description = "K shots per class; top-1 on the test split"


class BaseToNew(Protocol):
    name = "base2new"
    description = "train on the base half of the classes; top-1 on base and new classes, and their HM"
    metrics = (("top1", "base-class top-1 (%)"), ("top1_new", "new-class top-1 (%)"), ("hm", "harmonic mean"))
    row_fields = ("top1_new", "hm")
    eval_sets = {"top1": "test", "top1_new": "new", "hm": None}

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

    def recognises(self, row) -> bool:
        new = getattr(row, "top1_new", None)
        return new == new and new is not None

    def tables(self, rows, shots, metric, accuracy_tables):
        """A dataset's HM is the HM of its seed-mean base and new accuracies, and the Average HM the HM of
        the average base and the average new accuracy (CoCoOp's convention, not a mean of per-trial HMs)."""
        if metric != "hm":
            return None
        import pandas as pd

        base, new = accuracy_tables(rows, shots, "top1"), accuracy_tables(rows, shots, "top1_new")
        out = {}
        for k, (b, _) in base.items():
            n = new[k][0].reindex(index=b.index, columns=b.columns)
            out[k] = (2 * b * n / (b + n)).where(b + n != 0, 0.0), pd.DataFrame(float("nan"), b.index, b.columns)
        return out


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

    def recognises(self, row) -> bool:
        extras = getattr(row, "extras", None)
        return isinstance(extras, str) and '"top1.' in extras

    def expand(self, rows):
        """The target datasets' accuracies in ``extras``: one row (a table column) each."""
        extra = []
        for row in rows.itertuples(index=False):
            for key, value in json.loads(row.extras if isinstance(row.extras, str) else "{}").items():
                if key.startswith("top1."):
                    extra.append({**row._asdict(), "dataset": key[len("top1."):], "top1": value,
                                  TRAINED_ON: row.dataset})
        return extra or None

    def tables(self, rows, shots, metric, accuracy_tables):
        """The source and each target are columns; the Average is over the targets only."""
        tables = accuracy_tables(rows, shots, metric)
        for mean, _ in tables.values():
            mean["Average"] = mean[self.averaged(rows, [c for c in mean.columns if c != "Average"])].mean(
                axis=1, skipna=False)
        return tables

    def averaged(self, rows, columns):
        targets = set(rows["dataset"][rows[TRAINED_ON].notna()]) if TRAINED_ON in rows else set()
        return [c for c in columns if c in targets] or columns


def _accept(name: str, value: str, found) -> list[tuple[str, Protocol]]:
    if not (isinstance(found, type) and issubclass(found, Protocol)) or getattr(found, "name", None) != name:
        raise NotAUnit(f"{value} is not a bench Protocol subclass named '{name}'")
    return [(name, found())]


PROTOCOLS: Registry[Protocol] = Registry("bench.protocols", "protocol", _accept)


def protocols() -> dict[str, Protocol]:
    """Every protocol by name, in name order (the order old rows are recognised in)."""
    return dict(sorted(PROTOCOLS.items().items()))


def get_protocol(name: str) -> Protocol:
    return PROTOCOLS.get(name, f"protocols: {', '.join(protocols())}")


def row_fields() -> list[str]:
    """The columns the protocols add to the row schema, in order."""
    return list(dict.fromkeys(f for p in protocols().values() for f in p.row_fields))


def infer_protocol(row) -> str:
    """A row's protocol; rows written before rows carried it are recognised by what they hold."""
    if isinstance(row.protocol, str) and row.protocol:
        return row.protocol
    return next((p.name for p in protocols().values() if p.recognises(row)), DEFAULT)


def averaged_columns(rows, columns: list[str]) -> list[str]:
    """The dataset columns of a table of ``rows`` that its Average spans, by the rows' protocol."""
    present = [p for name, p in protocols().items() if "protocol" in rows and (rows["protocol"] == name).any()]
    return present[0].averaged(rows, columns) if len(present) == 1 else columns


def eval_sets() -> dict[str, str | None]:
    """Metric -> the evaluated set behind it, over every protocol (None: no interval)."""
    out: dict[str, str | None] = {}
    for p in protocols().values():
        for metric, eval_set in p.eval_sets.items():
            out.setdefault(metric, eval_set)
    return out
