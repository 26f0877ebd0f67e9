"""TrialSpec: plain data describing one trial, with a stable id; its :class:`Resolved` view is worked out once
per spec object (so once per process: a worker receives its spec once)."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any

from .plugin import Method, config_dict
from .registry import parse_stack


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What a spec's stack and settings come to: its plugins with their configs in pipeline order, each
    method's settings and those that differ from its defaults, the trial id and the stage keys."""

    plugins: tuple[tuple[type[Method], Any], ...]
    hyperparameters: dict[str, dict[str, Any]]  # method -> every setting
    settings: dict[str, dict[str, Any]]  # method -> the settings that differ from its defaults here
    trial_id: str
    stage_keys: tuple[str, ...]  # identity of the stack's first i + 1 stages (see TrialSpec.stage_key)


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    run: str
    suite: str
    dataset: str
    shots: int
    seed: int
    stack: str  # e.g. "coop+mask", as written by the user
    model: str = "tiny"
    pretrained: str = "bundled"
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # method -> key -> value
    data_root: str | None = None
    device: str = "cpu"
    results: str = "results"
    cache_dir: str | None = None  # shared feature and stage cache (None: no cache across trials)
    protocol: str = "fewshot"  # a registered protocol (bench.protocols): fewshot, base2new, shift
    shift_targets: tuple[str, ...] = ()  # shift protocol: datasets tested besides the training one
    data_fingerprint: str = ""  # content of the data the trial reads (bench.fingerprint), set by planning
    dataset_fingerprint: str = ""  # the dataset version's (equal across shots and seeds), set by planning
    weights_fingerprint: str = ""  # the starting weights' identity (tag or file hash), set by planning
    # Named variants the stack uses, so a worker resolves them: name -> {"method": base, **settings}.
    # Their settings reach the trial id through the variant's config and version.
    variants: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # Inference-speed measurement after the final evaluation: how many test images are timed (None: the
    # whole test split, 0: none) and in batches of how many. Not part of the trial id: it changes no result.
    infer_images: int | None = None
    infer_batch_size: int = 100
    # How the settings were chosen (bench.tune): "fixed" (as configured), "val-tuned" or "oracle" (chosen by a
    # search on the few-shot val or, to measure inflation, the test split), or one trial of such a search
    # ("search", "oracle-search"). ``tuning`` is that search's plain data (cell, budget, algorithm, space, and
    # the trial's sampled or the chosen settings). Both are part of the trial id except for fixed rows.
    selection: str = "fixed"
    tuning: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Numeric precision (bench.precision): fp32, tf32 or bf16. In the trial id and cache keys when not fp32,
    # so every fp32 id stays what it was before the option existed.
    precision: str = "fp32"

    @functools.cached_property
    def resolved(self) -> Resolved:
        """The stack resolved once: plugins (variants from this spec's own definitions, never registered
        anywhere), configs, settings, trial id and stage keys. Raises BenchError for a stack or setting
        that does not resolve. The id and stage keys need the spec's fingerprints (empty without them)."""
        from .cache import digest

        plugins = tuple((m, m.make_config(self.dataset, self.shots, self.overrides.get(m.name)))
                        for m in parse_stack(self.stack, self.variants))
        hparams = {m.name: config_dict(c) for m, c in plugins}
        settings = {}
        for m, _ in plugins:
            default = config_dict(m.make_config(self.dataset, self.shots))
            changed = {k: v for k, v in hparams[m.name].items() if default.get(k) != v}
            if changed:
                settings[m.name] = changed
        # The trial id hashes every field that changes the result: the data's and the weights' content, the
        # stack, its resolved settings and method versions, shots, seed and protocol (not run name, paths
        # or device).
        key = {
            "data": self.data_fingerprint, "shots": self.shots, "seed": self.seed,
            "pipeline": [m.name for m, _ in plugins],
            "versions": {m.name: m.version for m, _ in plugins},
            "config": hparams,
            "model": self.model, "weights": self.weights_fingerprint,
            "protocol": self.protocol, "shift_targets": list(self.shift_targets), **self.precision_key(),
        }
        if self.selection != "fixed":  # fixed rows keep the ids they had before selections existed
            key.update(selection=self.selection, tuning=self.tuning)
        if not (self.data_fingerprint and self.weights_fingerprint):
            return Resolved(plugins, hparams, settings, "", ())
        trial_id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        # A stage's identity: what the stack's first i + 1 stages learn on this trial's data depends on
        # nothing else, so e.g. the masks of ``mask`` and ``coop+mask`` are learned once.
        stage_keys = tuple(
            digest({"data": self.data_fingerprint, "shots": self.shots, "seed": self.seed,
                    "protocol": self.protocol, "model": self.model, "weights": self.weights_fingerprint,
                    "device": self.device, "stages": [[m.name, m.version, hparams[m.name]] for m, _ in plugins[:i + 1]],
                    **self.precision_key()})
            for i in range(len(plugins)))
        return Resolved(plugins, hparams, settings, trial_id, stage_keys)

    @property
    def trial_id(self) -> str:
        if not self.resolved.trial_id:
            raise ValueError("a TrialSpec gets its fingerprints from planning (bench.plan.plan_trials)")
        return self.resolved.trial_id

    def stage_key(self, upto: int) -> str:
        return self.resolved.stage_keys[upto]

    def precision_key(self) -> dict[str, str]:
        """The precision as an identity entry: absent for fp32 (ids made before the option stay valid)."""
        return {} if self.precision == "fp32" else {"precision": self.precision}

    def __getstate__(self) -> dict[str, Any]:  # the resolved view holds classes made at run time: not shipped
        return {k: v for k, v in self.__dict__.items() if k != "resolved"}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialSpec":
        return cls(**{**d, "shift_targets": tuple(d.get("shift_targets", ()))})
