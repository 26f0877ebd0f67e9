"""How a row's settings were chosen, and what a search trial may read.

``fixed`` rows run the settings as configured; `bench tune` adds ``val-tuned`` rows (settings chosen by a
search on the few-shot validation split) and, only to measure how much test selection inflates a method,
``oracle`` rows (chosen on the test split). The trials of a search are ``search`` (scored on few-shot val;
the test split is sealed: reading it is an error) or ``oracle-search`` (scored on test).
"""
from __future__ import annotations

import dataclasses

from .errors import BenchError

FIXED, VAL_TUNED, ORACLE = "fixed", "val-tuned", "oracle"
# a search trial's selection -> (the row column it is scored by, the selection of the row it chooses for)
SEARCH_TRIALS = {"search": ("val_top1", VAL_TUNED), "oracle-search": ("top1", ORACLE)}


def is_search_trial(selection: str) -> bool:
    return selection in SEARCH_TRIALS


class SealedSplit(list):
    """A split a trial must not read: any look at it (length, items, truthiness) is an error."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def _refuse(self, *args, **kwargs):
        raise BenchError(f"the {self.name} split is sealed during a search: settings are selected on the "
                         "few-shot validation split only")

    __len__ = __iter__ = __getitem__ = __bool__ = __contains__ = _refuse


def sealed_test(data):
    """``data`` (DatasetSplits) with its test split sealed."""
    return dataclasses.replace(data, test=SealedSplit("test"))
