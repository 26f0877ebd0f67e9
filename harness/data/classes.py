"""Class subsets: the base-to-new halves (CoCoOp's split) and ImageNet-variant label maps (domain shift).

``subsample_classes`` follows CoOp's ``OxfordPets.subsample_classes``: labels sorted, base = the first
ceil(C/2), new = the rest, each half relabelled from 0 in label order.

``shift_label_map`` relates a test-only ImageNet variant to ImageNet itself. Variants keep CoOp's labels
(ImageNet-V2/-Sketch: the 1000 ImageNet labels; ImageNet-A/-R: 0..199 over their 200 wnid folders,
sorted), and CoOp scores them as a C-way problem over the variant's own classes. A classifier trained on
ImageNet is scored the same way by keeping only the logit columns of the variant's classes, in the
variant's order: ``LabelMap.select(logits).argmax(-1)`` is then a variant label.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Literal

from ..errors import BenchError
from .splits import DatasetSplits, Datum

_WNID = re.compile(r"^n\d{8}$")


def read_classnames(path: Path, key: str, fix: str) -> dict[str, str]:
    """A class-name file (``classnames.txt``): lines ``<key> <class name with spaces>`` -> {key: name}, in
    file order; blank lines and lines starting with '#' are skipped. A line without a name is refused with
    ``fix`` as the remedy."""
    out: dict[str, str] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, cname = line.strip().partition(" ")
        if not cname.strip():
            raise BenchError(f"{path} line {i} is not '<{key}> <class name>'; {fix}")
        out[name] = cname.strip()
    return out


def split_labels(labels: list[int] | set[int], which: str) -> list[int]:
    """The sorted labels of one half: base = first ceil(C/2), new = the rest (CoCoOp)."""
    ordered = sorted(set(labels))
    m = math.ceil(len(ordered) / 2)
    if which == "base":
        return ordered[:m]
    if which == "new":
        return ordered[m:]
    raise BenchError(f"class subset must be 'base', 'new' or 'all', got '{which}'")


def subsample_classes(splits: DatasetSplits, which: Literal["base", "new", "all"]) -> DatasetSplits:
    """Keep one half of the classes in every split, relabelled from 0 (``all`` returns ``splits``)."""
    if which == "all":
        return splits
    selected = split_labels({d.label for d in splits.train} or set(range(len(splits.classnames))), which)
    relabel = {old: new for new, old in enumerate(selected)}

    def keep(items: list[Datum]) -> list[Datum]:
        return [dataclasses.replace(d, label=relabel[d.label]) for d in items if d.label in relabel]

    return dataclasses.replace(
        splits, train=keep(splits.train), val=keep(splits.val), test=keep(splits.test),
        classnames=[splits.classnames[old] for old in selected],
    )


# -- domain shift ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LabelMap:
    """For each label of a target (variant) dataset, the label of the same class in the source dataset."""

    source: str
    target: str
    source_labels: tuple[int, ...]  # index = target label
    matched_by: str  # "wnid" | "name" | "index"

    def __len__(self) -> int:
        return len(self.source_labels)

    def select(self, logits):
        """Source-space logits [..., C_source] -> target-space logits [..., C_target] (column subset)."""
        return logits[..., list(self.source_labels)]


def _class_keys(splits: DatasetSplits) -> dict[int, str]:
    """label -> name of the folder its images sit in (a wnid for ImageNet and -Sketch/-A/-R)."""
    keys: dict[int, str] = {}
    for d in (*splits.train, *splits.test):
        keys.setdefault(d.label, Path(d.path).parent.name)
    return keys


def shift_label_map(source: DatasetSplits, target: DatasetSplits) -> LabelMap:
    """Match the target's classes to the source's: by wnid folder where both have them, else by name.

    ImageNet-V2's folders are numbers, so it is matched by class name (both read CoOp's classnames.txt);
    where a name occurs twice in the source, the label with the same index is taken if its name agrees.
    """
    src_keys, tgt_keys = _class_keys(source), _class_keys(target)
    n_target = len(target.classnames)
    src_by_wnid = {k: label for label, k in src_keys.items() if _WNID.match(k)}
    if n_target and all(_WNID.match(tgt_keys.get(t, "")) for t in range(n_target)) and src_by_wnid:
        missing = [tgt_keys[t] for t in range(n_target) if tgt_keys[t] not in src_by_wnid]
        if missing:
            raise BenchError(f"{len(missing)} classes of '{target.name}' (e.g. {missing[0]}) are not classes of "
                             f"'{source.name}'; is the {source.name} train folder complete?")
        return LabelMap(source.name, target.name, tuple(src_by_wnid[tgt_keys[t]] for t in range(n_target)), "wnid")
    by_name: dict[str, list[int]] = {}
    for label, name in enumerate(source.classnames):
        by_name.setdefault(name, []).append(label)
    out, how = [], "name"
    for t, name in enumerate(target.classnames):
        hits = by_name.get(name, [])
        if len(hits) == 1:
            out.append(hits[0])
        elif t in hits:
            out.append(t)
            how = "index"
        else:
            raise BenchError(f"class '{name}' of '{target.name}' is {'ambiguous' if hits else 'not found'} among "
                             f"the classes of '{source.name}'; both must use the same classnames.txt")
    return LabelMap(source.name, target.name, tuple(out), how)


def relabel_to_source(target: DatasetSplits, mapping: LabelMap, source: DatasetSplits) -> DatasetSplits:
    """The target with labels in the source's label space and the source's class list (a C_source-way
    problem; use ``mapping.select`` on logits instead for CoOp's C_target-way scoring)."""
    table = mapping.source_labels

    def move(items: list[Datum]) -> list[Datum]:
        return [Datum(d.path, table[d.label], source.classnames[table[d.label]]) for d in items]

    return dataclasses.replace(target, train=move(target.train), val=move(target.val), test=move(target.test),
                               classnames=list(source.classnames))
