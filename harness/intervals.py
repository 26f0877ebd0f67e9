"""95 % intervals for accuracies and gains: a paired bootstrap over test images and seeds.

Every trial keeps its test predictions (``<run>/predictions/<trial_id>.parquet``), so a cell (row label x
dataset, one shot count) is a matrix of per-image scores ``[seeds, images]``: 1/0 correct for an
accuracy, ``correct_A - correct_B`` (in {-1, 0, 1}) for the gain "A vs B". The test split is the same
for every seed and stack, so one bootstrap replicate draws the test images once with replacement — the
same images for both stacks and for every seed (paired) — and, when there are several seeds, draws the
seeds with replacement too; its value is the mean over the drawn seeds of the mean over the drawn images.
The interval is the 2.5th-97.5th percentile of 2000 replicates (percentile bootstrap). The Average column
averages the datasets' replicates (datasets are independent test sets). Replicates are drawn by numpy in
blocks of whole index matrices, from a generator seeded by the bootstrap seed, the dataset and the metric:
every row of one dataset sees the same draws, and a report's intervals are exactly reproducible and do not
depend on which cells are computed.

Only cells whose every trial kept its predictions (rows written before predictions were kept have none)
and whose stacks ran the same seeds on the same test images get an interval; the harmonic mean of
base-to-new runs gets none.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Callable

import numpy as np
import pandas as pd

DEFAULT_REPS = 2000
LEVEL = 0.95
EVAL_SET_OF_METRIC = {"top1": "test", "top1_new": "new"}  # hm: no interval
_BLOCK = 1 << 22  # image counts drawn per block of replicates
_KEEP = 1 << 24  # test sets whose draws (reps x images, 2 bytes each) stay in memory


@dataclasses.dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def label_column(rows: pd.DataFrame) -> str:
    """The column naming a report row: ``label`` (stack plus distinguishing settings) when present."""
    return "label" if "label" in rows.columns else "stack"


class Resampler:
    """The bootstrap draws for one test set of ``n_images`` seen by ``n_seeds`` seeds: per replicate, how
    often each image is drawn (N draws with replacement) and which seeds are drawn. Every row of the same
    test set is resampled with the same draws; they are kept in memory for test sets of moderate size and
    drawn again, identically, from the generator's saved state for large ones."""

    def __init__(self, rng: np.random.Generator, n_seeds: int, n_images: int, reps: int):
        self.bit_generator = type(rng.bit_generator)
        self.state = rng.bit_generator.state
        self.n_seeds, self.n_images, self.reps = n_seeds, n_images, reps
        self._kept = list(self._blocks()) if reps * n_images <= _KEEP else None

    def _blocks(self):
        bits = self.bit_generator()
        bits.state = self.state
        rng = np.random.Generator(bits)
        n = self.n_images
        block = max(1, _BLOCK // n)
        for start in range(0, self.reps, block):
            r = min(block, self.reps - start)
            images = rng.integers(0, n, (r, n)) + n * np.arange(r)[:, None]
            counts = np.bincount(images.ravel(), minlength=r * n).reshape(r, n).astype(np.uint16)
            seeds = rng.integers(0, self.n_seeds, (r, self.n_seeds)) if self.n_seeds > 1 else None
            yield counts, seeds

    def replicates(self, scores: np.ndarray) -> np.ndarray:
        """Replicates (percent) of the mean of ``scores`` [seeds, images]."""
        scores = np.asarray(scores, dtype=np.float32)
        if scores.shape != (self.n_seeds, self.n_images):
            raise ValueError(f"scores of shape {scores.shape}, draws for {(self.n_seeds, self.n_images)}")
        out = []
        for counts, seeds in self._kept if self._kept is not None else self._blocks():
            per_seed = (counts.astype(np.float32) @ scores.T).astype(np.float64) / self.n_images  # [r, seeds]
            if seeds is not None:
                per_seed = np.take_along_axis(per_seed, seeds, axis=1)
            out.append(per_seed.mean(1))
        return 100.0 * np.concatenate(out)


def replicates(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates (percent) of the mean of ``scores`` [seeds, images]: images drawn once per
    replicate and shared by every seed, seeds drawn too when there are several."""
    scores = np.asarray(scores)
    return Resampler(rng, *scores.shape, reps).replicates(scores)


def interval(estimate: float, reps: np.ndarray, level: float = LEVEL) -> Interval:
    tail = (1 - level) / 2
    low, high = np.quantile(reps, [tail, 1 - tail])
    return Interval(float(estimate), float(low), float(high))


def bootstrap(scores: np.ndarray, reps: int = DEFAULT_REPS, seed: int = 0, level: float = LEVEL) -> Interval:
    """Interval of the mean score (percent) of one cell; ``scores`` = [seeds, images]."""
    scores = np.asarray(scores, dtype=np.float64)
    return interval(100.0 * scores.mean(), replicates(scores, reps, np.random.default_rng(seed)), level)


def paired_gain(correct_a: np.ndarray, correct_b: np.ndarray, reps: int = DEFAULT_REPS, seed: int = 0,
                level: float = LEVEL) -> Interval:
    """Interval of acc(A) - acc(B) (points) from both stacks' per-image correctness [seeds, images]."""
    return bootstrap(np.asarray(correct_a, float) - np.asarray(correct_b, float), reps, seed, level)


def cell_rng(seed: int, *names: object) -> np.random.Generator:
    """A generator for one cell, fixed by the bootstrap seed and the cell's name."""
    return np.random.default_rng([seed, *(zlib.crc32(str(n).encode()) for n in names)])


class PredictionScores:
    """Per-image correctness of trials, read once from the run's kept predictions."""

    def __init__(self, read_predictions: Callable[[str], pd.DataFrame | None]):
        self.read = read_predictions
        self._frames: dict[str, pd.DataFrame | None] = {}
        self._correct: dict[tuple, tuple | None] = {}
        self._resamplers: dict[tuple, Resampler] = {}

    def resampler(self, seed: int, dataset: str, metric: str, n_seeds: int, n_images: int, reps: int) -> Resampler:
        """The draws of one test set, shared by every row and gain of it in this report."""
        key = (seed, dataset, metric, n_seeds, n_images, reps)
        if key not in self._resamplers:
            self._resamplers[key] = Resampler(cell_rng(seed, dataset, metric), n_seeds, n_images, reps)
        return self._resamplers[key]

    def _frame(self, trial_id: str) -> pd.DataFrame | None:
        if trial_id not in self._frames:
            self._frames[trial_id] = self.read(trial_id)
        return self._frames[trial_id]

    def correct(self, row, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, correct) in split order for one row's metric, or None when the trial kept none."""
        key = (row.trial_id, row.dataset, metric)
        if key not in self._correct:
            self._correct[key] = self._read_correct(row, metric)
        return self._correct[key]

    def _read_correct(self, row, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        if metric not in EVAL_SET_OF_METRIC:
            return None
        frame = self._frame(row.trial_id)
        if frame is None:
            return None
        eval_set = EVAL_SET_OF_METRIC[metric]
        if metric == "top1" and (frame["eval_set"] == row.dataset).any():  # a shift target's own column
            eval_set = row.dataset
        part = frame[frame["eval_set"] == eval_set].sort_values("index")
        if part.empty:
            return None
        return part["label"].to_numpy(), (part["predicted"] == part["label"]).to_numpy()

    def matrix(self, cell: pd.DataFrame, metric: str) -> tuple[tuple, np.ndarray] | None:
        """(seeds, correct [seeds, images]) of one cell's rows, or None unless every row kept aligned
        predictions of the same test images."""
        cell = cell.sort_values("seed")
        seeds, labels, rows = [], None, []
        for row in cell.itertuples(index=False):
            got = self.correct(row, metric)
            if got is None:
                return None
            if labels is None:
                labels = got[0]
            elif len(got[0]) != len(labels) or not np.array_equal(got[0], labels):
                return None
            seeds.append(int(row.seed))
            rows.append(got[1])
        if not rows or len(set(seeds)) != len(seeds):
            return None
        return tuple(seeds), np.stack(rows)


def _cells(rows: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """(row label, dataset) -> that cell's rows."""
    return {key: group for key, group in rows.groupby([label_column(rows), "dataset"], sort=False)}


def _with_average(per_dataset: dict[str, tuple[float, np.ndarray] | None], columns: list[str],
                  level: float) -> dict[str, Interval | None]:
    out = {d: (interval(*v, level) if v is not None else None) for d, v in per_dataset.items()}
    if "Average" in columns:
        parts = [per_dataset.get(d) for d in columns if d != "Average"]
        out["Average"] = (interval(np.mean([p[0] for p in parts]), np.mean([p[1] for p in parts], axis=0), level)
                          if parts and all(p is not None for p in parts) else None)
    return out


def accuracy_intervals(rows: pd.DataFrame, scores: PredictionScores, metric: str = "top1",
                       reps: int = DEFAULT_REPS, seed: int = 0, level: float = LEVEL) -> pd.DataFrame:
    """Intervals of the mean accuracy per (row label, dataset) and the Average, for rows of one shot count;
    a frame of :class:`Interval` (None where predictions are missing)."""
    key = label_column(rows)
    datasets = list(dict.fromkeys(rows["dataset"]))
    cells = _cells(rows)
    table = {}
    for label in dict.fromkeys(rows[key]):
        per = {}
        for dataset in datasets:
            cell = cells.get((label, dataset))
            got = scores.matrix(cell, metric) if cell is not None else None
            per[dataset] = None if got is None else (
                100.0 * got[1].mean(), scores.resampler(seed, dataset, metric, *got[1].shape, reps).replicates(got[1]))
        table[label] = _with_average(per, [*datasets, "Average"], level)
    return pd.DataFrame(table).T.reindex(columns=[*datasets, "Average"])


def gain_intervals(rows: pd.DataFrame, gains: pd.DataFrame, scores: PredictionScores, metric: str = "top1",
                   reps: int = DEFAULT_REPS, seed: int = 0, level: float = LEVEL) -> pd.DataFrame:
    """Paired intervals for every gain row "A vs B" of one shot count's table (same index and columns as
    ``gains``; None where a cell has no interval)."""
    columns = list(gains.columns)
    datasets = [c for c in columns if c != "Average"]
    cells = _cells(rows)
    table = {}
    for name in gains.index:
        a, b = str(name).split(" vs ", 1)
        per = {}
        for dataset in datasets:
            cell_a, cell_b = cells.get((a, dataset)), cells.get((b, dataset))
            if cell_a is None or cell_b is None:
                per[dataset] = None
                continue
            got_a, got_b = scores.matrix(cell_a, metric), scores.matrix(cell_b, metric)
            if got_a is None or got_b is None or got_a[0] != got_b[0] or got_a[1].shape != got_b[1].shape:
                per[dataset] = None
                continue
            diff = got_a[1].astype(np.float32) - got_b[1].astype(np.float32)
            draws = scores.resampler(seed, dataset, metric, *diff.shape, reps)
            per[dataset] = 100.0 * diff.mean(), draws.replicates(diff)
        table[name] = _with_average(per, columns, level)
    return pd.DataFrame(table, columns=list(gains.index)).T.reindex(index=gains.index, columns=columns)
