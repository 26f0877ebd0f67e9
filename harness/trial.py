"""One trial, from its spec to exactly one row: few-shot split -> model -> fit each method of the stack ->
scores -> the row written (``ok`` with its metrics, or ``error`` with why)."""
from __future__ import annotations

import datetime as dt
import functools
import json
import random
import shutil
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import open_clip
import pyarrow as pa
import torch

from .cache import FeatureCache, StageCache, module_fingerprint
from .classifier import ClipClassifier, ZeroShotHead
from .context import TrialContext
from .cost import encoder_gflops
from .errors import BenchError
from .evaluation import Predictions, evaluate, measure_throughput, peak_memory_mb
from .fingerprint import PROCESS, fingerprinted, read_trial_data
from .models import load_model
from .plugin import IMAGE_FEATURE_PARTS
from .precision import use_matmul_precision
from .protocols import get_protocol
from .results import RowWriteError, RunFolder
from .rows import error_row, spec_fields
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
    """Load the trial's data (listed once per process, see bench.fingerprint.Listings) and model, and wrap them
    as a zero-shot classifier."""
    device = resolve_device(spec.device)
    read = functools.partial(read_trial_data, spec.dataset, spec.data_root, spec.shots, spec.seed,
                             spec.shift_targets, PROCESS)
    data = read()
    if spec.data_fingerprint and data.fingerprint != spec.data_fingerprint:  # changed since this process read it?
        PROCESS.clear()
        data = read()
    if spec.data_fingerprint and data.fingerprint != spec.data_fingerprint:  # by hand: nothing to check
        raise BenchError(f"the data of '{spec.dataset}' changed after this run was planned (fingerprint "
                         f"{spec.data_fingerprint}, now {data.fingerprint}); run the same command again to plan "
                         "trials on the data as it is now")
    if data.short:
        progress(f"{len(data.short)} classes of {spec.dataset} have fewer than {spec.shots} train images; "
                 "all taken")
    model, preprocess, tokenizer = load_model(spec.model, spec.pretrained, str(device))
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]
    ctx = TrialContext(spec=spec, clf=None, tokenizer=tokenizer, data=get_protocol(spec.protocol).prepare(data.fewshot),
                       read=data, device=device, image_size=int(size), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                       progress=progress, short_classes=len(data.short), encoder_id=encoder_identity(spec),
                       cache=FeatureCache(spec.cache_dir, spec.run) if spec.cache_dir else None,
                       num_workers=loader_workers(device), precision=spec.precision, preprocess=preprocess)
    ctx.clf = ClipClassifier(model, ZeroShotHead(torch.zeros(1, 1), 1.0)).to(device)
    ctx.clf.head = ZeroShotHead(ctx.text_weights(), ctx.clf.logit_scale).to(device)
    return ctx


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
    plugins = spec.resolved.plugins
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


def execute_trial(spec: TrialSpec, progress: Callable[[str], None] = lambda m: None,
                  where: dict[str, Any] | None = None,
                  on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Run ``spec`` and write its row into the run folder; a failure becomes an error row.

    Every ``progress`` message also goes, timestamped, into the trial's ``artifacts/<trial_id>/log.txt``
    (one block per attempt, each opened by a line naming the trial and where it runs).
    ``where`` names the place that ran it (the Ray node's ``node_id`` and ``node_ip``) and goes into the row;
    ``on_epoch`` listens to the last method's epochs (:func:`bench.trial.run_trial`).
    The traceback of an unexpected failure is written next to the rows as ``<trial_id>.traceback.txt``.
    Artifacts reach the results location before the row does, so a row never points at missing files.
    Raises ``RowWriteError`` when the row itself cannot be stored (an object store that refuses the PUT).
    """
    folder = RunFolder(spec.results, spec.run)
    where = where or {}
    artifacts = folder.artifact_dir(spec.trial_id)
    log = TrialLog(artifacts / "log.txt")
    log.write(f"trial {spec.trial_id} ({spec.dataset}, {spec.shots}-shot, seed {spec.seed}, {spec.stack}) on "
              f"{socket.gethostname()} {where.get('node_ip', '')}".rstrip())
    progress = log.and_then(progress)
    try:
        row = {**spec_fields(spec), "hostname": socket.gethostname(), **where,
               **run_trial(spec, progress, artifact_dir=artifacts,
                          keep_predictions=functools.partial(folder.write_predictions, spec.trial_id),
                          on_epoch=on_epoch)}
    except BenchError as err:
        row = error_row(spec, str(err), where)
    except Exception as err:  # a bug or a resource problem inside one trial must not end the run
        row = error_row(spec, f"{type(err).__name__}: {err}".splitlines()[0][:500], where)
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / "traceback.txt").write_text(traceback.format_exc())
    log.write(f"{row['status']}: top1 {row.get('top1')}" if row["status"] == "ok" else f"error: {row['error']}")
    try:
        folder.publish_artifacts(spec.trial_id)
    except RowWriteError as err:
        row = error_row(spec, f"artifacts not saved: {err}", where)
    folder.write_row(row)
    return row


class TrialLog:
    """Appends timestamped lines to a trial's log file; a file that cannot be written never fails the trial."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, message: str) -> None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(f"{stamp} {message}\n")
        except OSError:
            pass

    def and_then(self, progress: Callable[[str], None]) -> Callable[[str], None]:
        def log_and_pass_on(message: str) -> None:
            self.write(message)
            progress(message)
        return log_and_pass_on
