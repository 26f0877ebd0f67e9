"""Linear probe: logistic regression on frozen image features, CoOp's ``lpclip`` protocol.

Faithful to KaiyangZhou/CoOp ``lpclip/linear_probe.py`` (reference: baselines.md §6):

* Features: the image tower's raw (un-normalised) output with the test transform (one view), for the
  few-shot train and val images; in a stack, after any installed adapter.
* Classifier: scikit-learn ``LogisticRegression`` (lbfgs, ``max_iter`` 1000, L2 penalty, the default).
* C search on the few-shot validation split: first the grid [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]; around its
  peak (the first best value) the range [peak/10, peak*10] is bisected in log space for 8 steps: each step
  fits both ends, keeps the better one (the left one on ties) and halves the range towards it.
* The chosen C: the largest C, among every C the search fitted, whose validation accuracy is the best
  (lpclip keeps the last step's). With 1-4 validation images per class many Cs tie, and which of the tied
  ones the bisection ends on turns on float rounding that differs between CPUs and thread counts; the rule
  settles every tie the same way. The classifier fitted on the train split with that C becomes the head:
  an ``nn.Linear`` holding the sklearn coefficients and intercepts, applied to the same raw features.
* ``C`` set explicitly skips the search (fits once with that C).

Differences from ``lpclip``: the train and val subsets are the project's shared Dassl few-shot samples
(the same images every other method of the trial sees; val = min(K, 4) per class), not lpclip's own
``np.random.choice`` draws (lpclip's val shots {1: 1, 2: 2, 4: 4, 8: 4, 16: 4} are the same numbers), and the
selection reads the few-shot val split only — the test split is never touched here (lpclip prints a test
number at every bisection step but reports the last one, so it does not select on test either).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Annotated, Optional

import numpy as np
import torch
from torch import nn

from bench import BenchError, Method, Part
from bench.plugin import AtLeastOne, NonNegative, Positive, Search


C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


@dataclasses.dataclass
class LinearProbeConfig:
    c_grid: Annotated[tuple[float, ...], Positive] = C_GRID  # initial grid of inverse regularisation strengths
    search_steps: Annotated[int, NonNegative] = 8  # log-space bisection steps around the grid's peak
    max_iter: Annotated[int, AtLeastOne] = 1000
    C: Optional[Annotated[float, Positive, Search(low=1e-6, high=1e6, log=True)]] = None  # fixed C: no search


def fit_logreg(x: np.ndarray, y: np.ndarray, c: float, max_iter: int):
    """sklearn's lbfgs logistic regression (L2, the default penalty), BLAS threads capped at torch's.

    The cap follows ``torch.get_num_threads()`` (what the trial was given): an uncapped BLAS pool on a
    busy machine oversubscribes the cores and makes these small fits tens of times slower.
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(limits=torch.get_num_threads()):
        warnings.simplefilter("ignore")  # lbfgs convergence warnings at extreme C are expected
        return LogisticRegression(solver="lbfgs", max_iter=max_iter, C=c).fit(x, y)


def fit_many(x: np.ndarray, y: np.ndarray, cs: list[float], max_iter: int) -> list:
    """``fit_logreg`` for each C; with several trial threads the fits run side by side, one BLAS thread
    each (the grid's 7 fits, each bisection step's 2), instead of one after another. Each fit is the same
    computation either way; with one thread this is the sequential loop."""
    threads = torch.get_num_threads()
    if threads <= 1 or len(cs) == 1:
        return [fit_logreg(x, y, c, max_iter) for c in cs]
    from concurrent.futures import ThreadPoolExecutor

    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(limits=1), ThreadPoolExecutor(min(threads, len(cs))) as pool:
        warnings.simplefilter("ignore")  # as fit_logreg; set here, once: the filters are process-wide
        return list(pool.map(lambda c: LogisticRegression(solver="lbfgs", max_iter=max_iter, C=c).fit(x, y), cs))


def val_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float((model.predict(x) == y).mean())


def search_c(train_x, train_y, val_x, val_y, grid=C_GRID, steps: int = 8, max_iter: int = 1000):
    """lpclip's C search on (val_x, val_y), then the largest C of the best validation accuracy (module
    docstring); each round's fits run side by side (``fit_many``). Returns (C, fitted model, history of
    (C, val accuracy))."""
    history, fitted = [], {}

    def accuracies(cs: list[float]) -> list[float]:
        out = []
        for c, model in zip(cs, fit_many(train_x, train_y, cs, max_iter)):
            fitted[c] = model
            out.append(val_accuracy(model, val_x, val_y))
            history.append((c, out[-1]))
        return out

    accs = accuracies(list(grid))
    peak = grid[int(np.argmax(accs))]
    left, right = math.log10(peak) - 1.0, math.log10(peak) + 1.0
    for _ in range(steps):
        a_left, a_right = accuracies([10 ** left, 10 ** right])
        mid = 0.5 * (left + right)
        if a_left < a_right:
            left = mid
        else:
            right = mid
    best = max(acc for _, acc in history)
    chosen_c = max(c for c, acc in history if acc == best)
    return chosen_c, fitted[chosen_c], history


def linear_head(model, num_classes: int, dim: int) -> nn.Linear:
    """An nn.Linear with the sklearn model's weights, over all classes (absent ones never win)."""
    coef, intercept = np.asarray(model.coef_, dtype=np.float64), np.asarray(model.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:  # binary: sklearn keeps one row; split it symmetrically (same softmax)
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight = np.zeros((num_classes, dim))
    bias = np.full(num_classes, -1e4)
    classes = np.asarray(model.classes_, dtype=int)
    weight[classes], bias[classes] = coef, intercept
    head = nn.Linear(dim, num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    return head.requires_grad_(False)


class LinearProbe(Method):
    name = "linear_probe"
    description = "Linear probe: logistic regression on frozen image features (CoOp lpclip protocol)"
    trains = "a linear classifier (sklearn lbfgs, L2), C searched on the few-shot val split"
    changes = frozenset({Part.HEAD})
    Config = LinearProbeConfig
    version = "2"  # 2: the largest C of the best validation accuracy, not the bisection's last
    transfers_to_new_classes = False  # one weight vector per training class
    reference = True

    @classmethod
    def plan_work(cls, config: LinearProbeConfig, plan) -> None:
        plan.features("train")
        if config.C is None:
            plan.features("val")

    def fit(self, clf, ctx) -> dict:
        cfg: LinearProbeConfig = self.config
        with torch.no_grad():
            train_x = clf.adapt(ctx.features("train")[0]).cpu().double().numpy()
        train_y = ctx.labels("train").cpu().numpy()
        if cfg.C is not None:
            chosen_c, model, history = cfg.C, fit_logreg(train_x, train_y, cfg.C, cfg.max_iter), []
        else:
            if not ctx.split("val"):
                raise BenchError("linear_probe chooses C on the few-shot validation split, but it is empty; "
                                 "set linear_probe.C=<value>")
            with torch.no_grad():
                val_x = clf.adapt(ctx.features("val")[0]).cpu().double().numpy()
            val_y = ctx.labels("val").cpu().numpy()
            chosen_c, model, history = search_c(train_x, train_y, val_x, val_y, tuple(cfg.c_grid),
                                                cfg.search_steps, cfg.max_iter)
        dim = train_x.shape[1]
        clf.head = linear_head(model, ctx.num_classes, dim).to(ctx.device)
        return {"trainable_params": dim * ctx.num_classes + ctx.num_classes, "C": float(chosen_c)}
