"""What a trial's row says about the trial itself: its spec's fields, settings and versions, and the row of a
trial that failed. (The columns and their types: bench.results.)"""
from __future__ import annotations

import datetime as dt
import json
import socket
from typing import Any

import open_clip
import torch

from . import __version__
from .data.catalog import get_dataset
from .spec import TrialSpec


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
        "hparams": json.dumps(spec.resolved.hyperparameters, sort_keys=True),
        "settings": json.dumps(spec.resolved.settings, sort_keys=True),
        "variants": json.dumps(spec.variants, sort_keys=True, default=str),
        "torch": torch.__version__, "open_clip": open_clip.__version__, "bench": __version__,
    }


def error_row(spec: TrialSpec, message: str, where: dict[str, Any] | None = None) -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc)
    return {**safe_spec_fields(spec), "status": "error", "error": message, "hostname": socket.gethostname(),
            **(where or {}), "started_at": now, "finished_at": now}


def safe_spec_fields(spec: TrialSpec) -> dict[str, Any]:
    try:
        return spec_fields(spec)
    except Exception:  # e.g. a plugin that no longer loads: keep what plain data we have
        return {**plain_spec_fields(spec), "trial_id": _id_or_none(spec)}


def _id_or_none(spec: TrialSpec) -> str | None:
    try:
        return spec.trial_id
    except Exception:
        return None
