"""Turn a suite plus command-line choices into validated TrialSpecs, before anything runs."""
from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from .data.catalog import canonical_entry, check_data, get_dataset
from .errors import BenchError
from .fingerprint import PROCESS, fingerprinted
from .precision import check_precision, default_precision
from .protocols import get_protocol
from .registry import canonical_stack, get_method, parse_stack, variant_needs
from .results import check_run_name
from .spec import TrialSpec
from .suite import Suite


# On cpu a prefix of the test split is timed: one batch of the default size. Timing 256 images took 0.8 s of
# a synthetic trial's ~1 s outside fit and eval. On the tiny model (one thread, six alternated rounds) 100
# images gave a median 291 images/s (265-349) and 256 gave 316 (284-354): the ranges overlap.
CPU_INFER_IMAGES = 100
# On cuda the first 1,000 test images are timed: the speed of a stack does not depend on which images it
# classifies, and timing all of them (ImageNet: 50,000 per trial) was a sixth of the comparison's encoder work.
CUDA_INFER_IMAGES = 1000


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"--{what} must be a comma list of integers, e.g. 1,2,4; got '{text}'") from None
    if not values:
        raise BenchError(f"--{what} is empty; give a comma list of integers, e.g. 1,2,4")
    return values


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["mask.lr=1e-4", "coop.n_ctx=4"]`` -> ``{"mask": {"lr": "1e-4"}, "coop": {"n_ctx": "4"}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        method, dot, name = key.strip().partition(".")
        if not (eq and dot and method and name):
            raise BenchError(f"bad --set '{item}': write METHOD.KEY=VALUE, e.g. --set mask.lr=1e-4")
        out.setdefault(method, {})[name] = value.strip()
    return out


def check_names(suite: Suite, *, methods: list[str] | None, datasets: list[str] | None,
                sets: dict[str, dict[str, Any]]) -> None:
    """The mistakes a typo makes, answered before Ray starts: unknown methods (plugins are loaded only for a
    name that is not an installed plugin's, e.g. a built-in variant or a typo), unknown datasets, and a
    ``--set`` for a method the run does not use. Whether the data is there is :func:`plan_trials`' check."""
    from .registry import cheap_names, split_stack

    names = list(dict.fromkeys(p for s in (methods or suite.methods) for p in split_stack(s)))
    for name in names:
        if name not in cheap_names():
            get_method(name)
    for entry in datasets or suite.datasets:
        get_dataset(canonical_entry(entry))
    for method, values in sets.items():
        if method not in names:
            key = next(iter(values))
            raise BenchError(f"--set {method}.{key}: '{method}' is not in this run, whose methods are "
                             f"{', '.join(names)}; set one of those, or add '{method}' to --methods")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def plan_trials(suite: Suite, *, run: str, results: str, methods: list[str] | None = None,
                datasets: list[str] | None = None, shots: list[int] | None = None,
                seeds: list[int] | None = None, model: str | None = None, pretrained: str | None = None,
                data_root: str | None = None, device: str | None = None,
                sets: dict[str, dict[str, Any]] | None = None, cache_dir: str | None = None,
                infer_images: int | None = -1, infer_batch_size: int = 100,
                precision: str | None = None) -> list[TrialSpec]:
    """``infer_images``: test images timed for the inference-speed columns (None: all, 0: no measurement,
    -1: the default, the first CUDA_INFER_IMAGES on cuda and CPU_INFER_IMAGES on cpu). ``precision``:
    fp32, tf32 or bf16 (None: bench.precision.default_precision for the device)."""
    check_run_name(run)
    check_names(suite, methods=methods, datasets=datasets, sets=sets or {})
    protocol = get_protocol(suite.protocol)
    stacks = list(dict.fromkeys(canonical_stack(s) for s in (methods or suite.methods)))
    for stack in stacks:
        protocol.check_stack(stack, parse_stack(stack))
    datasets = [canonical_entry(d) for d in (datasets or suite.datasets)]
    for name in [*datasets, *suite.shift_targets]:
        check_data(get_dataset(name), data_root)
    shots = shots or suite.shots
    if any(k <= 0 for k in shots):
        raise BenchError(f"shots must be positive integers, got {shots}")
    device = device or suite.device or default_device()
    if device not in ("cpu", "cuda"):
        raise BenchError(f"--device must be cpu or cuda, got '{device}'")
    if infer_images == -1:
        infer_images = CUDA_INFER_IMAGES if device == "cuda" else CPU_INFER_IMAGES
    precision = check_precision(precision or default_precision(device))
    if (infer_images is not None and infer_images < 0) or infer_batch_size < 1:
        raise BenchError("--infer-images must be 0 (no speed measurement) or more, and --infer-batch-size 1 or more")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BenchError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    from .models import image_blocks, preflight

    model, pretrained = choose_weights(suite, model, pretrained)
    preflight(model, pretrained)
    blocks = image_blocks(model, pretrained)
    PROCESS.clear()  # a run is planned on the data as it is now; this process's trials reuse these reads
    specs = []
    for dataset, k, seed, stack in itertools.product(datasets, shots, seeds or suite.seeds, stacks):
        overrides = suite.overrides_for(get_dataset(dataset).name)
        for method, values in (sets or {}).items():
            overrides.setdefault(method, {}).update(values)
        in_stack = set(stack.split("+"))
        spec = fingerprinted(TrialSpec(
            run=run, suite=suite.name, dataset=dataset, shots=k, seed=seed, stack=stack, model=model,
            pretrained=pretrained, overrides={m: v for m, v in overrides.items() if m in in_stack},
            data_root=_absolute(data_root), device=device, results=_absolute(str(results)),
            cache_dir=_absolute(cache_dir), protocol=suite.protocol, shift_targets=tuple(suite.shift_targets),
            variants=variant_needs(stack), infer_images=infer_images, infer_batch_size=infer_batch_size,
            precision=precision), PROCESS, cache_dir)
        for plugin, config in spec.resolved.plugins:  # every --set key and value checked now, not in a worker
            plugin.check_model(config, blocks)
        specs.append(spec)
    return specs


def _absolute(path: str | None) -> str | None:
    """A local path as every node and worker reads it (their working directories differ); URIs as they are."""
    return path if path is None or "://" in path else str(Path(path).expanduser().resolve())


def choose_weights(suite: Suite, model: str | None, pretrained: str | None) -> tuple[str, str | None]:
    """--model without --pretrained takes that model's own default weights, not the suite's."""
    if model is None:
        return suite.model, pretrained or suite.pretrained
    if pretrained is None:
        from .models import default_pretrained

        pretrained = default_pretrained(model)
    return model, pretrained


def default_run_name(suite: Suite, datasets: list[str] | None) -> str:
    """The suite's name; with own data (a path in --datasets) the data's names instead, so that other data
    never lands in a suite's run and breaks its table."""
    from .data.catalog import datasets as registered

    own = [get_dataset(canonical_entry(d)).name for d in datasets or [] if d not in registered()]
    if not own:
        return suite.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(dict.fromkeys(own)))  # the run's first line names it
