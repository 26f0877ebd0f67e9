"""The contract every method plugin fulfils.

A plugin is a subclass of :class:`Method` exposed through the ``bench.methods`` entry-point group.
It declares the parts of the classifier it changes (a set of :class:`Part`), its hyper-parameters as a
dataclass, and a ``fit`` that trains and installs itself into a :class:`~bench.classifier.ClipClassifier`.
"""
from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
import types
import typing
from typing import Any, ClassVar

from .errors import BenchError


class Part(enum.IntEnum):
    """Parts of the classifier a method can change, in training order.

    A stack is valid when its methods change disjoint parts; it is trained in this order (the first part a
    method changes decides its place): weights are learned and baked first, then tokens, prompt, adapter,
    head and logit term, as the paper stacks R-AMT under other methods."""

    IMAGE_WEIGHTS = 0  # which image-encoder weights are kept, baked in place (mask)
    IMAGE_DELTAS = 1  # modules added to the image encoder's weights (LoRA)
    TEXT_WEIGHTS = 2  # the text encoder's weights, or modules added to them (LoRA)
    IMAGE_TOKENS = 3  # learned tokens in the image encoder's input sequence (VPT, UPT)
    TEXT_PROMPT = 4  # the words fed to the text encoder: learned context (CoOp, ProGrad, CoCoOp, UPT)
    ADAPTER = 5  # a module on image features (CLIP-Adapter)
    HEAD = 6  # the classifier head that turns features into logits (CoOp's prompt head, linear probe)
    LOGIT_TERM = 7  # an extra term added to the logits (Tip-Adapter's cache)

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


# Parts whose change alters the image features (so features encoded before the change are stale).
IMAGE_FEATURE_PARTS = frozenset({Part.IMAGE_WEIGHTS, Part.IMAGE_DELTAS, Part.IMAGE_TOKENS})


@dataclasses.dataclass(frozen=True)
class Range:
    """A numeric setting's bounds, declared on a Config field: ``epochs: Annotated[int, Range(min=1)]``."""

    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False  # ``min`` itself not allowed (e.g. a learning rate > 0)

    def check(self, name: str, value) -> None:
        low_ok = self.min is None or (value > self.min if self.min_exclusive else value >= self.min)
        if not (low_ok and (self.max is None or value <= self.max)):
            raise BenchError(f"bad value {value!r} for '{name}': must be {self}")

    def __str__(self) -> str:
        parts = [f"{'>' if self.min_exclusive else '>='} {self.min:g}"] if self.min is not None else []
        parts += [f"<= {self.max:g}"] if self.max is not None else []
        return " and ".join(parts)


@dataclasses.dataclass(frozen=True)
class Search:
    """Where `bench tune` searches a setting, declared on its Config field beside its Range:
    ``lr: Annotated[float, Positive, Search(low=1e-4, high=1e-2, log=True)]``, or ``Search(choices=(4, 8, 16))``.

    Declared only where the method's paper or code tuned the setting; a suite file's ``[search.<method>]``
    table replaces a method's declared space."""

    low: float | None = None
    high: float | None = None
    log: bool = False  # sample log-uniformly (learning rates, regularisation strengths)
    choices: tuple = ()  # a finite set of values instead of a range

    def __post_init__(self):
        if self.choices:
            if self.low is not None or self.high is not None:
                raise ValueError("a Search has either choices or low/high, not both")
            object.__setattr__(self, "choices", tuple(self.choices))
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a Search range needs low < high, got {self.low!r}, {self.high!r}")
        elif self.log and self.low <= 0:
            raise ValueError(f"a log Search range needs low > 0, got {self.low!r}")

    def __str__(self) -> str:
        if self.choices:
            return "{" + ", ".join(_shown(c) for c in self.choices) + "}"
        return f"{'log ' if self.log else ''}[{self.low:g}, {self.high:g}]"


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else (f"{value:g}" if isinstance(value, float) else str(value))


def declared_space(config_cls: type) -> dict[str, Search]:
    """The settings a Config declares a :class:`Search` for: field name -> Search."""
    hints = typing.get_type_hints(config_cls, include_extras=True)
    out = {}
    for field in dataclasses.fields(config_cls):
        for mark in _marks(hints[field.name]):
            if isinstance(mark, Search):
                out[field.name] = mark
    return out


def _marks(hint) -> list:
    """The Annotated marks of a hint, looking inside Optional[...]."""
    if typing.get_origin(hint) is typing.Annotated:
        return list(typing.get_args(hint)[1:])
    return [m for arg in typing.get_args(hint) for m in _marks(arg)]


Positive = Range(min=0, min_exclusive=True)
AtLeastOne = Range(min=1)
NonNegative = Range(min=0)


@dataclasses.dataclass
class NoConfig:
    """Hyper-parameters of a method that has none."""


class Method:
    """Base class of method plugins. Subclasses set the class attributes and implement ``fit``."""

    name: ClassVar[str]
    description: ClassVar[str]
    changes: ClassVar[frozenset[Part]] = frozenset()  # empty: changes nothing (the zero-shot reference row)
    Config: ClassVar[type] = NoConfig
    version: ClassVar[str] = "1"  # bump when a change alters results: it is part of the trial id
    trains: ClassVar[str] = ""  # one line: what is trained and how (shown by `bench list methods`)
    row_fields: ClassVar[tuple[str, ...]] = ()  # numeric fit() outputs that get a row column of their own
    transfers_to_new_classes: ClassVar[bool] = True  # can be rebuilt for unseen class names (base-to-new)
    # How reports line the method up (the engine names no method):
    reference: ClassVar[bool] = False  # a reference row (zero-shot, linear probe): listed first
    gain_baseline: ClassVar[bool] = False  # every other stack gets an "S vs <this>" gain row
    stacked_gain: ClassVar[bool] = False  # stacks that add this method get an "X+<this> vs X" gain row
    # Named variants shipped with the plugin: name -> settings, e.g. {"amt": {"gdr": False}} (bench.registry).
    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    variant_of: ClassVar[str | None] = None  # set on a variant's class: its base method's name
    variant_settings: ClassVar[dict[str, Any]] = {}  # set on a variant's class: its settings

    def __init__(self, config: Any):
        self.config = config

    # -- configuration -------------------------------------------------------------------------
    @classmethod
    def defaults_for(cls, dataset: str, shots: int) -> dict[str, Any]:
        """Per-dataset / per-shot defaults from the paper, applied before user overrides."""
        return {}

    @classmethod
    def make_config(cls, dataset: str, shots: int, overrides: dict[str, Any] | None = None):
        values = {**cls.defaults_for(dataset, shots), **(overrides or {})}
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        for key in values:
            if key not in fields:
                known = ", ".join(sorted(fields)) or "none"
                raise BenchError(f"unknown setting '{cls.name}.{key}'; {cls.name} accepts: {known}")
        hints = typing.get_type_hints(cls.Config, include_extras=True)
        try:
            return cls.Config(**{k: coerce(f"{cls.name}.{k}", v, hints[k]) for k, v in values.items()})
        except ValueError as err:  # a Config's __post_init__ checks settings that depend on each other
            raise BenchError(f"bad settings for {cls.name}: {err}") from None

    @classmethod
    def check_model(cls, config, image_blocks: int | None) -> None:
        """Raise a BenchError when ``config`` cannot work on the run's model, whose image encoder has
        ``image_blocks`` transformer blocks (None: not a ViT); called before the first trial starts."""

    @classmethod
    def search_space(cls) -> dict[str, Search]:
        """Where `bench tune` searches this method's settings (empty: the method is defined as fixed)."""
        return declared_space(cls.Config)

    # -- reuse across trials (optional) ---------------------------------------------------------
    def export(self, clf, directory: Path) -> None:
        """Save what ``fit`` installed, so a later trial can ``restore`` it instead of training.

        Implementing export/restore makes the stage reusable: e.g. the masks learned for ``mask`` are
        reused by ``coop+mask`` on the same data and seed.
        """
        raise NotImplementedError

    def restore(self, clf, ctx, directory: Path) -> None:
        """Install the state written by ``export`` into ``clf`` (the inverse of export)."""
        raise NotImplementedError

    @classmethod
    def switched_off(cls, artifact_dir: Path) -> dict[str, float] | None:
        """% of each weight tensor this method switched off in a trial, read from the files it saved in the
        trial's artifact folder (the report's figure of where masks fall); None when it switches none off."""
        return None

    @classmethod
    def reusable(cls) -> bool:
        return cls.export is not Method.export and cls.restore is not Method.restore

    # -- cost ----------------------------------------------------------------------------------
    @classmethod
    def plan_work(cls, config: Any, plan) -> None:
        """Declare the image-encoder work ``fit`` does with ``config``, on a ``bench.cost.WorkPlan``
        (``plan.features(...)``, ``plan.live(...)``, ``plan.trained_stage(...)``), so that a comparison's
        cost is planned without running it (``benchmarks/paper_cost.py``). The default: not declared."""
        raise NotImplementedError(f"{cls.name} declares no encoder work (Method.plan_work)")

    # -- training ------------------------------------------------------------------------------
    def fit(self, clf, ctx) -> dict[str, Any]:
        """Train on ``ctx`` (the trial's few-shot data) and install the result into ``clf``.

        Returns row fields: those named in ``row_fields`` become columns, the rest go to ``extras``.
        """
        raise NotImplementedError


def config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` (often a string from ``--set``) to the field's type, or fail in one line.

    Understands bool/int/float/str, Optional, tuples and lists, ``Literal`` choices and ``Annotated``
    bounds (:class:`Range`)."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *marks = typing.get_args(hint)
        out = coerce(name, value, base)
        for mark in marks:
            if isinstance(mark, Range) and out is not None:
                for item in (out if isinstance(out, (tuple, list)) else [out]):
                    mark.check(name, item)
        return out
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value.strip()):
                return choice
        raise BenchError(f"bad value {value!r} for '{name}': choose one of "
                         + ", ".join(repr(c) for c in choices))
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None and type(None) in typing.get_args(hint):
        return None
    if origin in (typing.Union, types.UnionType) and args:
        if isinstance(value, str) and value.lower() in ("none", "null"):
            return None
        return coerce(name, value, args[0])
    if origin in (tuple, list):
        if not isinstance(value, (str, tuple, list)):
            raise BenchError(f"bad value {value!r} for '{name}': expected a comma list, e.g. 0.5,1.0")
        items = value.split(",") if isinstance(value, str) else list(value)
        inner = args[0] if args else str
        out = [coerce(name, v, inner) for v in items]
        return tuple(out) if origin is tuple else out
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value)) if isinstance(value, str) else int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            return str(value)
    except ValueError:
        pass
    else:
        return value
    raise BenchError(f"bad value {value!r} for '{name}': expected {getattr(hint, '__name__', hint)}")
