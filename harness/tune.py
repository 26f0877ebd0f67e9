"""`bench tune`: choose each stack's settings by a search on the few-shot validation split, with Ray Tune.

For every (dataset, shots, seed, stack) **cell** the stack's search space — the :class:`~bench.plugin.Search`
ranges its methods declare, or a suite file's ``[search.<method>]`` tables instead — is searched with a
budget of N trials: the configured settings first (so the choice can never score below them on the
objective), then N - 1 points drawn at random (``random``, ``asha``) or laid on a grid (``grid``: at most N).
Each search trial is an ordinary trial (stage and feature caches, stage-aware scheduling, packed like any
trial) whose test split is sealed; its row goes to the run's search table, ``<run>/search/trials/``. The
cell's choice is the best few-shot val top-1, ties to the earlier trial; the chosen settings then run once
more from scratch as the cell's ``val-tuned`` row, beside the ``fixed`` row of the configured settings.

``asha`` stops weak settings early: the stack's last method reports the few-shot val top-1 after every
epoch (``ctx.report_epoch``), and Ray Tune's ASHA compares a trial only with the trials of its own cell;
the configured settings always run to the end. ``--oracle`` selects on the test split instead, only to
measure how much test selection inflates a method: its rows say ``oracle`` and are reported apart.

Points are drawn from a seed made of the cell's dataset name, shots, seed, stack, space, budget and
algorithm — not from the data's content — so the same search runs whatever the test labels are.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import typing
from typing import Any, Callable

import numpy as np

from .cache import digest
from .console import err
from .errors import BenchError
from .plugin import Search, coerce
from .results import RunFolder
from .selection import SEARCH_TRIALS
from .spec import TrialSpec

SEARCHES = ("random", "grid", "asha")
ASHA_REDUCTION = 3  # ASHA keeps the best third at each rung; rungs at max_t/9, max_t/3 (grace = max_t // 9)


# -- search spaces -----------------------------------------------------------------------------------
def parse_space(plugin: type, table: Any, where: str) -> dict[str, Search]:
    """A suite file's ``[search.<method>]`` table as Search ranges, checked against the method's settings:
    ``lr = {low = 1e-4, high = 1e-2, log = true}``, ``n_ctx = [4, 8, 16]``, ``ratio = false`` (not searched)."""
    if not isinstance(table, dict):
        raise BenchError(f"{where}: [search.{plugin.name}] must be a table of settings, e.g. "
                         "lr = {low = 1e-4, high = 1e-2, log = true}")
    hints = typing.get_type_hints(plugin.Config, include_extras=True)
    space = {}
    for key, value in table.items():
        name = f"{plugin.name}.{key}"
        if key not in hints:
            raise BenchError(f"{where}: unknown setting '{name}' in [search.{plugin.name}]; "
                             f"{plugin.name} accepts: {', '.join(sorted(hints))}")
        if value is False:
            continue
        try:
            if isinstance(value, list):
                search = Search(choices=tuple(coerce(name, v, hints[key]) for v in value))
            elif isinstance(value, dict) and set(value) <= {"low", "high", "log"}:
                search = Search(low=value.get("low"), high=value.get("high"), log=bool(value.get("log", False)))
                for bound in (search.low, search.high):
                    coerce(name, bound, hints[key])
            else:
                raise ValueError("write {low = .., high = .., log = true}, a list of choices, or false")
        except (ValueError, TypeError) as error:
            raise BenchError(f"{where}: bad search range for '{name}': {error}") from None
        except BenchError as error:
            raise BenchError(f"{where}: search range for '{name}' leaves the setting's bounds ({error})") from None
        space[key] = search
    return space


def stack_space(spec: TrialSpec, overrides: dict[str, dict[str, Search]]) -> dict[str, Search]:
    """The stack's search space, ``method.key`` -> Search: each method's declared one, or the suite's."""
    space = {}
    for plugin, _ in spec.resolved.plugins:
        chosen = overrides.get(plugin.name, overrides.get(plugin.variant_of or "", plugin.search_space()))
        space.update({f"{plugin.name}.{key}": search for key, search in chosen.items()})
    return space


def _hints(spec: TrialSpec) -> dict[str, Any]:
    return {f"{p.name}.{k}": h for p, _ in spec.resolved.plugins
            for k, h in typing.get_type_hints(p.Config, include_extras=True).items()}


def _base_type(hint) -> type:
    while typing.get_args(hint) and typing.get_origin(hint) is not None:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _tidy(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _domain(search: Search, kind: type):
    from ray import tune

    if search.choices:
        return tune.choice(list(search.choices))
    if kind is int:
        low, high = int(math.ceil(search.low)), int(search.high) + 1
        return tune.lograndint(low, high) if search.log else tune.randint(low, high)
    return tune.loguniform(search.low, search.high) if search.log else tune.uniform(search.low, search.high)


def _grid_values(search: Search, kind: type, k: int) -> list:
    """``k`` values of an axis: the centres of ``k`` equal parts of the range (in log space for a log range),
    or of the list of choices."""
    centres = (np.arange(k) + 0.5) / k
    if search.choices:
        return list(dict.fromkeys(search.choices[int(c * len(search.choices))] for c in centres))
    if search.log:
        values = np.exp(np.log(search.low) + centres * (np.log(search.high) - np.log(search.low)))
    else:
        values = search.low + centres * (search.high - search.low)
    return list(dict.fromkeys(int(round(v)) if kind is int else float(v) for v in values))


def _grid_sizes(space: dict[str, Search], n: int) -> list[int]:
    """Values per axis: one more on each axis in turn while the grid stays within ``n`` points (an axis of
    choices stops at its number of choices)."""
    sizes, limits = [1] * len(space), [len(s.choices) or n for s in space.values()]
    grown = True
    while grown:
        grown = False
        for i in range(len(sizes)):
            if sizes[i] < limits[i] and math.prod(sizes) // sizes[i] * (sizes[i] + 1) <= n:
                sizes[i] += 1
                grown = True
    return sizes


def draw_points(space: dict[str, Search], hints: dict[str, Any], n: int, search: str,
                seed: int) -> list[dict[str, Any]]:
    """``n`` points of ``space`` (``method.key`` -> value): Ray Tune's random sampling from ``seed`` for
    random and asha; for grid, as many values on every axis as ``n`` allows (at most ``n`` points)."""
    if n <= 0 or not space:
        return []
    kinds = {key: _base_type(hints[key]) for key in space}
    if search == "grid":
        axes = [[(key, v) for v in _grid_values(s, kinds[key], k)]
                for (key, s), k in zip(space.items(), _grid_sizes(space, n))]
        points = [dict(p) for p in itertools.product(*axes)][:n]
    else:
        rng = np.random.default_rng(seed)
        domains = {key: _domain(s, kinds[key]) for key, s in space.items()}
        points = [{key: d.sample(random_state=rng) for key, d in domains.items()} for _ in range(n)]
    return [{key: coerce(key, _tidy(v.item() if hasattr(v, "item") else v), hints[key]) for key, v in p.items()}
            for p in points]


def _epochs(config) -> int:
    """At most how many epochs a method trains (a fixed step count bounds them too: one step or more each)."""
    return int(getattr(config, "steps", None) or getattr(config, "epochs", None) or 1)


def _nested(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        method, _, name = key.partition(".")
        out.setdefault(method, {})[name] = value
    return out


def _with_settings(overrides: dict, flat: dict[str, Any]) -> dict:
    merged = {m: dict(v) for m, v in overrides.items()}
    for method, values in _nested(flat).items():
        merged.setdefault(method, {}).update(values)
    return merged


def _resolved(spec: TrialSpec, keys) -> dict[str, Any]:
    hparams = spec.resolved.hyperparameters
    return {key: hparams[key.split(".", 1)[0]][key.split(".", 1)[1]] for key in keys}


# -- planning ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Cell:
    """One (dataset, shots, seed, stack) search: the fixed trial, the space and the search's trials."""

    fixed: TrialSpec
    cell: str  # the search's identity (fixed trial, space, budget, algorithm, objective)
    space: dict[str, Search]
    trials: list[TrialSpec]

    @property
    def name(self) -> str:
        f = self.fixed
        return f"{f.dataset}, {f.shots}-shot, seed {f.seed}, {f.stack}"

    @property
    def folder(self) -> RunFolder:
        return search_folder(self.fixed)

    def final(self, settings: dict[str, Any], selection: str) -> TrialSpec:
        """The row of the chosen settings, trained from scratch."""
        tuning = {k: v for k, v in self.trials[0].tuning.items() if k not in ("trial", "max_epochs")}
        return dataclasses.replace(self.fixed, overrides=_with_settings(self.fixed.overrides, settings),
                                   selection=selection, tuning={**tuning, "settings": settings})


def search_folder(spec: TrialSpec) -> RunFolder:
    return search_folder_of(RunFolder(spec.results, spec.run))


def search_folder_of(run: RunFolder) -> RunFolder:
    """A run's search table: ``<results>/<run>/search/trials/`` (read it with ``pandas.read_parquet``)."""
    return RunFolder(run.location, "search")


def _search_spec(spec: TrialSpec) -> TrialSpec:
    return dataclasses.replace(spec, results=RunFolder(spec.results, spec.run).location, run="search")


def suite_spaces(suite) -> dict[str, dict[str, Search]]:
    from .registry import get_method

    table = getattr(suite, "search", None) or {}
    if not isinstance(table, dict):
        raise BenchError(f"suite '{suite.name}': 'search' must be a table of [search.<method>] tables")
    return {method: parse_space(get_method(method), values, f"suite '{suite.name}'") for method, values in table.items()}


def plan_cells(specs: list[TrialSpec], suite, budget: int, search: str, oracle: bool = False) -> list[Cell]:
    """The searches of ``specs`` (the fixed trials), one per cell with a non-empty space."""
    if budget < 1:
        raise BenchError(f"--budget must be at least 1 (trials per cell), got {budget}")
    if search not in SEARCHES:
        raise BenchError(f"--search must be one of {', '.join(SEARCHES)}, got '{search}'")
    if oracle and search == "asha":
        raise BenchError("--oracle selects on the test split at the end of each trial; use --search random or "
                         "grid with it (asha stops trials on the validation split)")
    spaces = suite_spaces(suite)
    selection = "oracle-search" if oracle else "search"
    cells = []
    for fixed in specs:
        space = stack_space(fixed, spaces)
        if not space:
            continue
        hints = _hints(fixed)
        shown = {key: str(s) for key, s in space.items()}
        cell = digest({"fixed": fixed.trial_id, "space": shown, "budget": budget, "search": search,
                       "selection": selection})
        seed = int(digest({"dataset": fixed.dataset, "shots": fixed.shots, "seed": fixed.seed, "stack": fixed.stack,
                           "space": shown, "budget": budget, "search": search})[:8], 16)
        points = [_resolved(fixed, space), *draw_points(space, hints, budget - 1, search, seed)]
        base = {"cell": cell, "budget": budget, "search": search, "space": shown}
        trials = [dataclasses.replace(_search_spec(fixed), overrides=_with_settings(fixed.overrides, point),
                                      selection=selection, tuning={**base, "trial": i, "settings": point})
                  for i, point in enumerate(points)]
        if search == "asha":
            most = max(_epochs(t.resolved.plugins[-1][1]) for t in trials)
            trials = [dataclasses.replace(t, tuning={**t.tuning, "max_epochs": int(most)}) for t in trials]
        for t in trials:
            t.resolved  # every point is a valid setting (e.g. a Config's cross-checks), now
        cells.append(Cell(fixed, cell, space, trials))
    return cells


# -- choosing ----------------------------------------------------------------------------------------
def choose(cell: Cell, rows) -> tuple[int, dict[str, Any], float, float] | None:
    """(trial, settings, objective) of the cell's best complete trial — ties to the earlier trial, so the
    configured settings win a tie — and the configured settings' objective; None when no trial finished."""
    objective, _ = SEARCH_TRIALS[cell.trials[0].selection]
    mine = rows[(rows["tune_cell"] == cell.cell) & (rows["status"] == "ok")]
    if mine.empty:
        return None
    best = mine.sort_values([objective, "tune_trial"], ascending=[False, True], kind="stable").iloc[0]
    configured = mine.loc[mine["tune_trial"] == 0, objective]
    return (int(best["tune_trial"]), json.loads(best["tuned"]), float(best[objective]),
            float(configured.iloc[0]) if len(configured) else float("nan"))


# -- running -----------------------------------------------------------------------------------------
class TunePlan:
    """The searches of one `bench tune` command, run with the fixed trials, then the chosen settings."""

    def __init__(self, specs: list[TrialSpec], suite, budget: int, search: str, oracle: bool = False):
        self.search, self.oracle, self.budget = search, oracle, budget
        self.cells = plan_cells(specs, suite, budget, search, oracle)
        self.finals: list[TrialSpec] = []
        untuned = sorted({s.stack for s in specs} - {c.fixed.stack for c in self.cells})
        if untuned:
            err.print(f"not searched (no search space: the method is defined as fixed): {', '.join(untuned)}",
                      highlight=False, soft_wrap=True)
        if oracle:
            err.print("[bold yellow]warning:[/] --oracle selects settings on the TEST split; its rows measure how "
                      "much test selection inflates a method, are marked 'oracle' and are reported apart",
                      soft_wrap=True)

    def run(self, fixed_todo: list[TrialSpec], launch: Callable[..., Any]) -> None:
        """Run the fixed trials left and the searches' trials left (one schedule), then the finals left."""
        done = {}
        for cell in self.cells:
            key = cell.folder.root
            if key not in done:
                cell.folder.ensure()
                rows = cell.folder.read()
                done[key] = set(rows.loc[rows["status"].isin(["ok", "stopped"]), "trial_id"])
        search_todo = [t for c in self.cells for t in c.trials if t.trial_id not in done[c.folder.root]]
        n_trials = sum(len(c.trials) for c in self.cells)
        err.print(f"search: {len(self.cells)} cells, {self.search}, budget {self.budget}; {n_trials} search trials, "
                  f"running {len(search_todo)} -> {self.cells[0].folder.location if self.cells else '-'}",
                  highlight=False, soft_wrap=True)
        todo = [*fixed_todo, *search_todo]
        if todo:
            launch(todo, scheduler=cell_asha() if self.search == "asha" else None,
                   callbacks=[stopped_trials()] if self.search == "asha" else [])
        rows = self.cells[0].folder.read() if self.cells else None
        for cell in self.cells:
            objective, selection = SEARCH_TRIALS[cell.trials[0].selection]
            picked = choose(cell, rows)
            if picked is None:
                err.print(f"{cell.name}: no search trial finished; no {selection} row (see "
                          f"{cell.folder.location})", highlight=False, soft_wrap=True)
                continue
            trial, settings, score, configured = picked
            self.finals.append(cell.final(settings, selection))
            shown = ", ".join(f"{k}={v}" for k, v in settings.items())
            err.print(f"{cell.name}: chose {shown} (trial {trial + 1} of {len(cell.trials)}, {objective} {score:.2f}; "
                      f"configured settings {configured:.2f})", highlight=False, soft_wrap=True)
        folder = RunFolder(self.cells[0].fixed.results, self.cells[0].fixed.run) if self.cells else None
        finished = folder.done_ids() if folder else set()
        left = [f for f in self.finals if f.trial_id not in finished]
        if left:
            launch(left)


def cell_asha():
    """Ray Tune's ASHA within each search cell (see :class:`CellASHA`)."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

    class CellASHA(FIFOScheduler):
        """One ASHA per cell, so a trial is only ever compared with trials of its own cell on the epochs its
        last method reports (``epoch``, ``val_top1``). Fixed and final trials run to the end, and so does each
        cell's configured settings (trial 0), whose epochs still count in its cell's rungs."""

        def __init__(self):
            super().__init__()
            self.cells: dict[str, AsyncHyperBandScheduler] = {}

        def _asha(self, trial):
            spec = trial.config.get("spec", {})
            tuning = spec.get("tuning") or {}
            if spec.get("selection") not in SEARCH_TRIALS:
                return None
            if tuning["cell"] not in self.cells:
                most = max(1, int(tuning.get("max_epochs", 1)))
                self.cells[tuning["cell"]] = AsyncHyperBandScheduler(
                    time_attr="epoch", metric="val_top1", mode="max", max_t=most, stop_last_trials=False,
                    grace_period=max(1, most // ASHA_REDUCTION ** 2), reduction_factor=ASHA_REDUCTION)
            return self.cells[tuning["cell"]]

        def on_trial_add(self, tune_controller, trial):
            if (asha := self._asha(trial)) is not None:
                asha.on_trial_add(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result):
            asha = self._asha(trial)
            action = TrialScheduler.CONTINUE if asha is None else asha.on_trial_result(tune_controller, trial, result)
            configured = trial.config["spec"]["tuning"].get("trial") == 0 if asha is not None else True
            return TrialScheduler.CONTINUE if configured else action

        def on_trial_complete(self, tune_controller, trial, result):
            asha = self._asha(trial)
            if asha is not None and trial.trial_id in asha._trial_info:
                asha.on_trial_complete(tune_controller, trial, result)

        def on_trial_remove(self, tune_controller, trial):
            asha = self._asha(trial)
            if asha is not None and trial.trial_id in asha._trial_info:
                asha.on_trial_remove(tune_controller, trial)

    return CellASHA()


def stopped_trials():
    """A Tune callback that writes the search-table row of a trial ASHA stopped early (it cannot write its
    own): status ``stopped``, the last epoch it reached and its val top-1 there, its curve in ``extras``."""
    from ray import tune

    class StoppedTrials(tune.Callback):
        def __init__(self):
            self.curves: dict[str, list] = {}
            self.finished: set[str] = set()

        def __getstate__(self):  # driver-only, like bench's progress callback
            return {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("final"):
                self.finished.add(trial.trial_id)
            elif "epoch" in result:
                self.curves.setdefault(trial.trial_id, []).append([int(result["epoch"]), float(result["val_top1"])])

        def on_trial_complete(self, iteration, trials, trial, **info):
            curve = self.curves.get(trial.trial_id)
            if trial.trial_id in self.finished or not curve:
                return
            import datetime as dt

            from .rows import safe_spec_fields

            spec = TrialSpec.from_dict(trial.config["spec"])
            now = dt.datetime.now(dt.timezone.utc)
            RunFolder(spec.results, spec.run).write_row({
                **safe_spec_fields(spec), "status": "stopped",
                "error": f"stopped early by ASHA at epoch {curve[-1][0]}", "val_top1": curve[-1][1],
                "extras": json.dumps({"epochs_run": curve[-1][0], "val_curve": curve}),
                "started_at": now, "finished_at": now})

    return StoppedTrials()


def epoch_reporter(spec: TrialSpec, report: Callable[[dict], None]) -> Callable[[int, float], None] | None:
    """What a trial passes its epochs' val top-1 to: an ASHA search's trials report them through Tune."""
    if spec.selection not in SEARCH_TRIALS or (spec.tuning or {}).get("search") != "asha":
        return None
    return lambda epoch, top1: report({"final": False, "epoch": epoch, "val_top1": top1})


# -- reporting ---------------------------------------------------------------------------------------
def search_progress(rows) -> list[list[str]]:
    """Per cell of a search table: the objective of each trial in order (``s`` marks a trial ASHA stopped)
    and the best so far after each trial, with the chosen settings: how the search moved."""
    out = []
    rows = rows[rows["tune_cell"].notna()]
    for _, group in rows.groupby("tune_cell", sort=False):
        group = group.sort_values("tune_trial")
        first = group.iloc[0]
        objective = "top1" if first["selection"] == "oracle-search" else "val_top1"
        values, best, chosen, best_value = [], [], None, -1.0
        for row in group.itertuples(index=False):
            value = getattr(row, objective)
            ok = row.status == "ok"
            values.append("-" if value != value or value is None else f"{value:.1f}" + ("" if ok else "s"))
            if ok and value is not None and value > best_value:
                best_value, chosen = value, row.tuned
            best.append("-" if best_value < 0 else f"{best_value:.1f}")
        settings = ", ".join(f"{k}={v}" for k, v in json.loads(chosen).items()) if chosen else "-"
        out.append([f"{first['dataset']} {int(first['shots'])}-shot seed {int(first['seed'])} {first['stack']}",
                    f"{first['tune_search']} ({objective})", " ".join(values), " ".join(best), settings])
    return out


SEARCH_HEADER = ["cell", "search (objective)", "objective per trial (s: stopped early)", "best so far", "chosen"]


def search_table(run: RunFolder) -> tuple[str, list, list] | None:
    """(caption, header, body) of a run's search table, or None when the run has no search."""
    folder = search_folder_of(run)
    rows = folder.read() if folder.exists() else None
    if rows is None or rows.empty:
        return None
    return (f"search objective over trials, per cell (trial 1: the configured settings); {folder.location}",
            SEARCH_HEADER, search_progress(rows))
