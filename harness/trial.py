"""One trial: few-shot split -> model -> fit each method of the stack -> test top-1 -> one row."""
from __future__ import annotations

import datetime as dt
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import open_clip
import pyarrow as pa
import torch

from . import __version__
from .cache import FeatureCache, StageCache, module_fingerprint
from .cost import encoder_gflops
from .classifier import ClipClassifier, ZeroShotHead
from .context import TrialContext
from .data.catalog import get_dataset
from .errors import BenchError
from .fingerprint import dataset_fingerprint, fingerprinted, read_trial_data
from .models import load_model
from .plugin import IMAGE_FEATURE_PARTS, config_dict
from .precision import use_matmul_precision
from .protocols import get_protocol
from .results import PREDICTION_SCHEMA
from .selection import is_search_trial, sealed_test
from .spec import TrialSpec


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(device)


def build_context(spec: TrialSpec, progress: Callable[[str], None] = lambda m: None) -> TrialContext:
    """Load the trial's data and model and wrap them as a zero-shot classifier."""
    device = resolve_device(spec.device)
    def read():
        return read_trial_data(spec.dataset, spec.data_root, spec.shots, spec.seed, spec.shift_targets,
                               *process_memo(spec.data_root))
    data, short, (fingerprint, _), _ = read()
    if spec.data_fingerprint and fingerprint != spec.data_fingerprint:  # changed since this process read it?
        _LISTINGS.clear()
        _DATASET_FINGERPRINTS.clear()
        data, short, (fingerprint, _), _ = read()
    if spec.data_fingerprint and fingerprint != spec.data_fingerprint:  # by hand: nothing to check
        raise BenchError(f"the data of '{spec.dataset}' changed after this run was planned (fingerprint "
                         f"{spec.data_fingerprint}, now {fingerprint}); run the same command again to plan "
                         "trials on the data as it is now")
    data = get_protocol(spec.protocol).prepare(data)
    if short:
        progress(f"{len(short)} classes of {spec.dataset} have fewer than {spec.shots} train images; all taken")
    model, preprocess, tokenizer = load_model(spec.model, spec.pretrained, str(device))
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]
    ctx = TrialContext(spec=spec, clf=None, tokenizer=tokenizer, data=data, device=device, image_size=int(size),
                       mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), progress=progress, short_classes=len(short),
                       encoder_id=encoder_identity(spec),
                       cache=FeatureCache(spec.cache_dir, spec.run) if spec.cache_dir else None,
                       num_workers=loader_workers(device), precision=spec.precision, preprocess=preprocess)
    ctx.clf = ClipClassifier(model, ZeroShotHead(torch.zeros(1, 1), 1.0)).to(device)
    ctx.clf.head = ZeroShotHead(ctx.text_weights(), ctx.clf.logit_scale).to(device)
    return ctx


_LISTINGS: dict = {}  # (dataset, data root) -> its splits as read, for every later trial of this process
_DATASET_FINGERPRINTS: dict = {}


def process_memo(data_root: str | None):
    """``read_trial_data``'s memo hooks: a dataset is listed and fingerprinted once per process, not once
    per trial (ImageNet: 1.28 M files listed, 50,000 test files sized). A trial still checks its data
    against the planned fingerprint; a run is planned afresh (its data re-read) every time it starts."""
    def read(name: str):
        key = (name, data_root)
        if key not in _LISTINGS:
            _LISTINGS[key] = get_dataset(name).read(data_root)
        return _LISTINGS[key]

    def dataset_fp(name: str, full, targets):
        key = (id(full), tuple(id(t) for t in targets))  # the listings are kept alive above: ids are stable
        if key not in _DATASET_FINGERPRINTS:
            _DATASET_FINGERPRINTS[key] = dataset_fingerprint(full, targets)
        return _DATASET_FINGERPRINTS[key]
    return read, dataset_fp


def loader_workers(device: torch.device) -> int:
    """Crop workers of a trial's loaders: on CUDA one per CPU of the trial (the scheduler gives it
    ``--cpus-per-trial`` threads; the main process mostly waits on the GPU, so it takes no core of its own)
    unless the trial has a single CPU; none on CPU, where the cores compute."""
    cpus = torch.get_num_threads()
    return cpus if device.type == "cuda" and cpus > 1 else 0


def encoder_identity(spec: TrialSpec) -> str:
    """The starting encoder's identity: its weights, and the seed only where they are random (seeded init)."""
    weights = spec.weights_fingerprint or spec.pretrained
    return f"{spec.model}|{weights}" + (f"|{spec.seed}" if weights in ("random", "none", None) else "")


class Predictions:
    """Per test image of every set a trial is scored on: its index in the split, true and predicted class.

    ``eval_set`` names the set: ``test`` (the trial's own), ``new`` (base-to-new's new classes) or a
    shift target's dataset name. Kept so that intervals and later analyses need no rerun."""

    SCHEMA = PREDICTION_SCHEMA

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []

    def keeper(self, eval_set: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
        def keep(labels: torch.Tensor, predicted: torch.Tensor) -> None:
            n = len(labels)
            self.parts.append(pa.table({"eval_set": pa.array([eval_set] * n, pa.string()),
                                        "index": pa.array(np.arange(n, dtype=np.int32)),
                                        "label": pa.array(labels.cpu().numpy().astype(np.int32)),
                                        "predicted": pa.array(predicted.cpu().numpy().astype(np.int32))},
                                       schema=self.SCHEMA))
        return keep

    def table(self) -> pa.Table:
        return pa.concat_tables(self.parts) if self.parts else self.SCHEMA.empty_table()


@torch.no_grad()
def evaluate(ctx: TrialContext, split: str, select: Callable = lambda logits: logits,
             keep: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> tuple[float, int]:
    """Top-1 accuracy (percent) of the current classifier on a split, and the split's size.

    ``select`` picks the logit columns that are scored (e.g. a shifted dataset's own classes); ``keep``
    receives the labels and predicted classes, in split order."""
    if not ctx.split(split):
        return float("nan"), 0
    ctx.clf.eval()
    feats = ctx.features(split)[0]
    labels = ctx.labels(split)
    predicted = torch.cat([select(ctx.clf.logits_from_features(f)).argmax(-1) for f in feats.split(500)])
    if keep is not None:
        keep(labels, predicted)
    return 100.0 * int((predicted == labels).sum()) / len(labels), len(labels)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_throughput(ctx: TrialContext, batch_size: int = 100, max_images: int | None = None,
                       split: str = "test") -> dict[str, Any]:
    """Test-time speed of the final classifier: images/s of its real forward (images -> encoder -> every
    slot -> logits) over ``split`` (its first ``max_images``), the feature cache bypassed.

    The process's first measurement warms up on one batch (kernels, allocator), not counted; decoding and
    moving images to the device are not timed either, only the forward passes. Returns the row's ``infer_*``
    columns."""
    items = ctx.split(split)
    n = len(items) if max_images is None else min(len(items), max_images)
    if n == 0:
        return {"infer_images_per_s": None, "infer_batch_size": batch_size, "infer_images": 0}
    clf, device = ctx.clf, ctx.device
    was_training = clf.training
    clf.eval()
    batches = iter(ctx.loader(split, batch_size=batch_size))
    timed, seconds = 0, 0.0

    def forward(images: torch.Tensor) -> float:
        images = images.to(device, non_blocking=True)
        ctx.ledger.forward("timing", len(images))
        _sync(device)
        start = time.perf_counter()
        with ctx.autocast():
            clf(images)
        _sync(device)
        return time.perf_counter() - start

    try:
        warm_key = (ctx.spec.model, str(device), batch_size, ctx.image_size)
        first = None
        if warm_key not in _WARMED:  # once per process: kernels and allocator stay warm for later trials
            first, _ = next(batches)
            forward(first)
            _WARMED.add(warm_key)
        rest = [first] if first is not None and n <= len(first) else []  # a one-batch split: time it again
        for images in rest or (b for b, _ in batches):
            images = images[: n - timed]
            seconds += forward(images)
            timed += len(images)
            if timed >= n:
                break
    finally:
        clf.train(was_training)
    return {"infer_images_per_s": timed / seconds if seconds > 0 else None, "infer_batch_size": batch_size,
            "infer_images": timed}


_WARMED: set = set()  # (model, device, batch size, image size) this process has warmed up


def run_trial(spec: TrialSpec, progress: Callable[[str], None] = lambda m: None,
              artifact_dir: Path | None = None,
              keep_predictions: Callable[[pa.Table], None] | None = None,
              on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Run one trial and return its result row (raises on failure; the caller records errors).

    ``keep_predictions`` receives the test predictions (:class:`Predictions`) before the row is returned.
    ``on_epoch(epoch, val_top1)`` listens to the last method's epochs (``ctx.report_epoch``; a search's early
    stopping). A search trial (bench.selection) is scored on few-shot val with its test split sealed, or, in
    an oracle search, on test; it keeps no predictions and times nothing."""
    started = dt.datetime.now(dt.timezone.utc)
    if not spec.data_fingerprint:  # a spec made by hand rather than by planning
        spec = fingerprinted(spec, cache_dir=spec.cache_dir)
    seed_everything(spec.seed)
    use_matmul_precision(spec.precision)
    if spec.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ctx = build_context(spec, progress)
    ctx.artifact_dir = artifact_dir
    searching = is_search_trial(spec.selection)
    if spec.selection == "search":
        ctx.data = sealed_test(ctx.data)
    row: dict[str, Any] = {"extras": {}}
    if ctx.short_classes:  # Dassl takes every image of a class smaller than K; say so in the row
        row["extras"]["classes_with_fewer_than_k"] = ctx.short_classes
    trainable = 0
    t0 = time.perf_counter()
    stages = StageCache(spec.cache_dir, spec.run) if spec.cache_dir else None
    plugins = spec.configs()
    for i, (plugin, config) in enumerate(plugins):
        seed_everything(spec.seed)
        method = plugin(config)
        ctx.epoch_listener = on_epoch if i == len(plugins) - 1 else None
        # A stage is reused when it and every stage before it can be saved and restored.
        stages = stages if stages is not None and plugin.reusable() else None
        out = fit_stage(method, ctx, stages, spec.stage_key(i) if stages else None, progress)
        trainable += int(out.pop("trainable_params", 0))
        for key in list(out):
            if key in plugin.row_fields:
                row[key] = out.pop(key)
        row["extras"].update({f"{plugin.name}.{k}": v for k, v in out.items()})
        if plugin.changes & IMAGE_FEATURE_PARTS:
            ctx.encoder_id = module_fingerprint(ctx.clf.model.visual)
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictions = Predictions()
    ctx.epoch_listener = None
    val_top1, _ = evaluate(ctx, "val")
    top1, n_test = (None, None) if spec.selection == "search" else \
        evaluate(ctx, "test", keep=predictions.keeper("test"))
    t_speed = time.perf_counter()  # on the trial's own test split, before a protocol swaps data or head
    if spec.infer_images != 0 and not searching:
        row.update(measure_throughput(ctx, spec.infer_batch_size, spec.infer_images))
    speed_seconds = time.perf_counter() - t_speed
    if not searching:
        fields, extras = get_protocol(spec.protocol).extra_metrics(
            ctx, spec, top1, lambda split, select=lambda logits: logits, name="test":
            evaluate(ctx, split, select, keep=predictions.keeper(name)))
        row.update(fields)
        row["extras"].update(extras)
    eval_seconds = time.perf_counter() - t0 - speed_seconds
    if keep_predictions is not None and not searching:
        keep_predictions(predictions.table())
    row.update(ctx.ledger.row(encoder_gflops(ctx.clf.model.visual, ctx.image_size, (spec.model, ctx.image_size)),
                              ctx.images.decoded + ctx.other_images.decoded, spec.precision))
    row.update(
        status="ok", error=None, top1=top1, val_top1=val_top1, n_train=len(ctx.data.train), n_test=n_test,
        trainable_params=trainable, fit_seconds=fit_seconds, eval_seconds=eval_seconds,
        peak_mem_mb=peak_memory_mb(spec.device), started_at=started,
        finished_at=dt.datetime.now(dt.timezone.utc),
    )
    row["extras"] = json.dumps(row["extras"], sort_keys=True, default=str)
    return row


def fit_stage(method, ctx: TrialContext, stages: StageCache | None, key: str | None,
              progress: Callable[[str], None]) -> dict[str, Any]:
    """Fit one method of the stack, or restore it from the stage cache when this stage was learned before."""
    if stages is None:
        progress(f"fitting {method.name}")
        return dict(method.fit(ctx.clf, ctx) or {})
    with stages.claim(key) as folder:
        if folder is not None:
            progress(f"reusing {method.name} from stage {key}")
            method.restore(ctx.clf, ctx, folder)
            out = json.loads((folder / "row.json").read_text())
            out["reused_stage"] = key
            if ctx.artifact_dir is not None:  # keep the trial's artifacts self-contained
                shutil.copytree(folder, ctx.artifact_dir / method.name, dirs_exist_ok=True)
            return out
        progress(f"fitting {method.name}")
        out = dict(method.fit(ctx.clf, ctx) or {})

        def fill(tmp: Path) -> None:
            method.export(ctx.clf, tmp)
            (tmp / "row.json").write_text(json.dumps(out, default=str))

        stages.publish(key, fill)
        return out




def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_spec_fields(spec: TrialSpec) -> dict[str, Any]:
    """The row fields a spec holds as plain data: readable even when a plugin or dataset no longer loads."""
    return {
        "run": spec.run, "suite": spec.suite, "protocol": spec.protocol, "dataset": spec.dataset,
        "shots": spec.shots, "seed": spec.seed, "stack": spec.stack, "model": spec.model,
        "pretrained": spec.pretrained, "data_fingerprint": spec.data_fingerprint,
        "dataset_fingerprint": spec.dataset_fingerprint, "weights_fingerprint": spec.weights_fingerprint,
        "device": spec.device, "precision": spec.precision, **selection_fields(spec),
    }


def selection_fields(spec: TrialSpec) -> dict[str, Any]:
    """The row's columns saying how its settings were chosen (bench.selection)."""
    tuning = spec.tuning or {}
    return {"selection": spec.selection, "tune_budget": tuning.get("budget"), "tune_search": tuning.get("search"),
            "tuned": json.dumps(tuning["settings"], sort_keys=True) if "settings" in tuning else None,
            "tune_cell": tuning.get("cell"), "tune_trial": tuning.get("trial")}


def spec_fields(spec: TrialSpec) -> dict[str, Any]:
    """Every row field that describes the trial (its id, registered dataset name, settings, versions)."""
    return {
        **plain_spec_fields(spec), "trial_id": spec.trial_id, "dataset": get_dataset(spec.dataset).name,
        "hparams": json.dumps(spec.hyperparameters(), sort_keys=True),
        "settings": json.dumps(non_default_settings(spec), sort_keys=True),
        "variants": json.dumps(spec.variants, sort_keys=True, default=str),
        "torch": torch.__version__, "open_clip": open_clip.__version__, "bench": __version__,
    }


def non_default_settings(spec: TrialSpec) -> dict[str, dict[str, Any]]:
    """The settings of each method that differ from its defaults for this dataset and shot count:
    what tells two rows of one stack apart in a report."""
    out = {}
    for plugin, config in spec.configs():
        default = config_dict(plugin.make_config(spec.dataset, spec.shots))
        changed = {k: v for k, v in config_dict(config).items() if default.get(k) != v}
        if changed:
            out[plugin.name] = changed
    return out
