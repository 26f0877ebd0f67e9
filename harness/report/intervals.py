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
depend on which cells are computed. Every cell and gain of one test set is resampled by one matrix product of
the draws with all their scores per block (``Resampler.paired_replicates``), with the same numbers, bit for
bit, as one cell at a time.

Only cells whose every trial kept its predictions (rows written before predictions were kept have none)
and whose stacks ran the same seeds on the same test images get an interval, and only metrics a protocol
declares an evaluated set for (``Protocol.eval_sets``: a metric that is no mean of per-image scores has none).
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from ..protocols import averaged_columns, eval_sets

DEFAULT_REPS = 2000
LEVEL = 0.95
_BLOCK = 1 << 22  # image counts drawn per block of replicates
_KEEP = 1 << 24  # test sets whose draws (reps x images, 2 bytes each) stay in memory
_STACK = 1024  # trials whose scores one product of the draws takes at most


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
        for counts, seeds in self._draws():
            per_seed = (counts.astype(np.float32) @ scores.T).astype(np.float64) / self.n_images  # [r, seeds]
            if seeds is not None:
                per_seed = np.take_along_axis(per_seed, seeds, axis=1)
            out.append(per_seed.mean(1))
        return 100.0 * np.concatenate(out)

    def _draws(self):
        return self._kept if self._kept is not None else self._blocks()

    def paired_replicates(self, matrices: list[np.ndarray], pairs: list[tuple[int, int | None]]) -> list[np.ndarray]:
        """Replicates (percent) per pair (a, b): of the mean of ``matrices[a]`` (b None) or of the paired
        difference ``matrices[a] - matrices[b]`` — all from one product of the draws with every matrix stacked.

        For 0/1 scores (correctness) they equal :meth:`replicates` of each matrix or difference on its own, bit
        for bit: the product's entries are whole numbers of at most ``n_images`` (< 2**24), exact in float32 in
        any order of summation, and the rest is the same arithmetic on the same values."""
        for m in matrices:
            if m.shape != (self.n_seeds, self.n_images):
                raise ValueError(f"scores of shape {m.shape}, draws for {(self.n_seeds, self.n_images)}")
        stacked = np.concatenate(matrices).astype(np.float32)
        first = np.array([a for a, _ in pairs])
        second = np.array([b if b is not None else a for a, b in pairs])
        paired = np.array([b is not None for _, b in pairs])[None, :, None]
        out = []
        for counts, seeds in self._draws():
            sums = (counts.astype(np.float32) @ stacked.T).reshape(len(counts), len(matrices), self.n_seeds)
            if seeds is not None:  # every seed's sum is gathered at the seeds drawn, the same for every matrix
                sums = np.take_along_axis(sums, seeds[:, None, :], axis=2)
            per_seed = np.where(paired, sums[:, first] - sums[:, second], sums[:, first])
            out.append((per_seed.astype(np.float64) / self.n_images).mean(2))  # [replicates, pairs]
        return list(100.0 * np.concatenate(out).T)


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


def cell_rng(seed: int, *names: object) -> np.random.Generator:
    """A generator for one cell, fixed by the bootstrap seed and the cell's name."""
    return np.random.default_rng([seed, *(zlib.crc32(str(n).encode()) for n in names)])


class PredictionScores:
    """Per-image correctness of trials, each trial's predictions read once: all of a run's at the first
    question, in batches (``batches``, e.g. ``RunFolder.prediction_batches``), any other trial's on its own
    (``read_predictions``).

    Holds per trial and evaluated set its correctness (one byte per image) and its labels (one array shared
    by every trial with the same labels, in practice one per test set); per cell (and pair of cells) its
    replicates (``reps`` float64), so a report's tables and figures draw each once. While it resamples a test
    set, the bootstrap adds per trial of that set a copy of its correctness and, for at most ``_STACK`` trials
    at a time, its scores in float32 (4 bytes per image) and its replicate sums (about 20 bytes per replicate)."""

    def __init__(self, read_predictions: Callable[[str], pd.DataFrame | None],
                 batches: Callable[[], Iterable[pa.RecordBatch]] | None = None):
        self.read = read_predictions
        self.batches = batches
        self._sets: dict[str, dict[str, tuple[np.ndarray, np.ndarray]] | None] | None = None
        self._labels: dict[bytes, np.ndarray] = {}
        self._resamplers: dict[tuple, Resampler] = {}
        self._replicates: dict[tuple, np.ndarray] = {}
        self._eval_set_of: dict[str, str | None] | None = None

    def eval_set_of(self, metric: str) -> str | None:
        """The evaluated set behind a metric, as the protocols declare it (None: no interval)."""
        if self._eval_set_of is None:
            self._eval_set_of = eval_sets()
        return self._eval_set_of.get(metric)

    def resampler(self, seed: int, dataset: str, metric: str, n_seeds: int, n_images: int, reps: int) -> Resampler:
        """The draws of one test set, shared by every row and gain of it in this report."""
        key = (seed, dataset, metric, n_seeds, n_images, reps)
        if key not in self._resamplers:
            self._resamplers[key] = Resampler(cell_rng(seed, dataset, metric), n_seeds, n_images, reps)
        return self._resamplers[key]

    def _eval_sets(self, trial_id: str) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """Evaluated set -> (labels, correct) in split order for one trial; None when it kept none."""
        if self._sets is None:
            self._sets = {}
            for batch in self.batches() if self.batches is not None else ():
                self._add_batch(batch)
        if trial_id not in self._sets:
            frame = self.read(trial_id)
            if frame is None:
                self._sets[trial_id] = None
            else:
                names, codes = np.unique(frame["eval_set"].to_numpy(dtype=object), return_inverse=True)
                self._sets[trial_id] = self._split(list(names), codes, frame["index"].to_numpy(),
                                                   frame["label"].to_numpy(),
                                                   (frame["predicted"] == frame["label"]).to_numpy())
        return self._sets[trial_id]

    def _add_batch(self, batch: pa.RecordBatch) -> None:
        """The trials of one batch of (trial_id, predictions): every image's arrays taken at once."""
        lists = batch.column("predictions")
        ids = batch.column("trial_id").to_pylist()
        valid = lists.is_valid().to_numpy(zero_copy_only=False)
        offsets, values = lists.offsets.to_numpy(), lists.values
        sets = values.field("eval_set")
        sets = sets if pa.types.is_dictionary(sets.type) else sets.dictionary_encode()
        names, codes = sets.dictionary.to_pylist(), sets.indices.to_numpy(zero_copy_only=False)
        index, label = (values.field(f).to_numpy(zero_copy_only=False) for f in ("index", "label"))
        correct = label == values.field("predicted").to_numpy(zero_copy_only=False)
        lengths = np.diff(offsets)[valid]
        if len(names) == 1 and len(lengths) and (lengths == lengths[0]).all() and lengths[0] > 0:
            # the usual batch: one evaluated set, each trial's images in index order, the same labels
            whole = slice(offsets[0], offsets[-1])
            idx, lab = index[whole].reshape(-1, lengths[0]), label[whole].reshape(-1, lengths[0])
            if (np.diff(idx, axis=1) > 0).all() and (lab == lab[0]).all():
                labels, rows = self._intern(lab[0]), iter(correct[whole].reshape(-1, lengths[0]))
                for trial_id, kept in zip(ids, valid):
                    self._sets[trial_id] = {names[0]: (labels, next(rows))} if kept else None
                return
        for i, trial_id in enumerate(ids):
            a, b = offsets[i], offsets[i + 1]
            self._sets[trial_id] = self._split(names, codes[a:b], index[a:b], label[a:b], correct[a:b]) \
                if valid[i] else None

    def _intern(self, labels: np.ndarray) -> np.ndarray:
        """One array for every trial with these labels."""
        return self._labels.setdefault(labels.tobytes() + labels.dtype.str.encode(), labels.copy())

    def _split(self, names: list[str], codes: np.ndarray, index: np.ndarray, label: np.ndarray,
               correct: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """One trial's images by evaluated set, each in index order."""
        one = len(codes) and (codes == codes[0]).all()
        groups = [(names[codes[0]], slice(None))] if one else [(names[c], codes == c) for c in np.unique(codes)]
        out = {}
        for name, where in groups:
            idx, lab, cor = index[where], label[where], correct[where]
            if (np.diff(idx) <= 0).any():
                order = np.argsort(idx, kind="stable")
                lab, cor = lab[order], cor[order]
            out[name] = (self._intern(lab), cor)
        return out

    def correct(self, row, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, correct) in split order for one row's metric, or None when the trial kept none."""
        return self._correct(row.trial_id, row.dataset, metric)

    def _correct(self, trial_id: str, dataset: str, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        eval_set = self.eval_set_of(metric)
        if eval_set is None:
            return None
        sets = self._eval_sets(trial_id)
        if sets is None:
            return None
        if eval_set == "test" and dataset in sets:  # a further dataset the trial was scored on: its own set
            eval_set = dataset
        return sets.get(eval_set)

    def matrix(self, cell: pd.DataFrame, metric: str) -> tuple[tuple, np.ndarray] | None:
        """(seeds, correct [seeds, images]) of one cell's rows, or None unless every row kept aligned
        predictions of the same test images."""
        got = self._matrix(cell, metric)
        return None if got is None else got[:2]

    def _matrix(self, cell: pd.DataFrame, metric: str) -> tuple[tuple, np.ndarray, tuple] | None:
        """:meth:`matrix` and the cell's trial ids, in seed order."""
        order = np.argsort(cell["seed"].to_numpy())
        ids, datasets = cell["trial_id"].to_numpy()[order], cell["dataset"].to_numpy()[order]
        seeds = tuple(int(s) for s in cell["seed"].to_numpy()[order])
        labels, rows = None, []
        for trial_id, dataset in zip(ids, datasets):
            got = self._correct(trial_id, dataset, metric)
            if got is None:
                return None
            if labels is None:
                labels = got[0]
            elif got[0] is not labels and (len(got[0]) != len(labels) or not np.array_equal(got[0], labels)):
                return None
            rows.append(got[1])
        if not rows or len(set(seeds)) != len(seeds):
            return None
        return seeds, np.stack(rows), tuple(ids)

    def estimates(self, cells: dict[tuple[str, str], pd.DataFrame], wanted: dict[str, dict[str, tuple]],
                  metric: str, reps: int, seed: int) -> dict[str, dict[str, tuple[float, np.ndarray] | None]]:
        """(estimate, replicates) per name and dataset of ``wanted`` (name -> dataset -> (label A, label B
        or None)): the mean accuracy of cell A, or the paired gain of A over B. None where a cell kept no
        aligned predictions or, for a gain, the two cells' seeds or images differ."""
        out: dict[str, dict] = {name: {} for name in wanted}
        for dataset in dict.fromkeys(d for per in wanted.values() for d in per):
            found: dict[str, tuple | None] = {}

            def cell(label: str) -> tuple | None:  # (seeds, correct, trial ids) of one cell of this dataset
                if label not in found:
                    rows = cells.get((label, dataset))
                    found[label] = None if rows is None else self._matrix(rows, metric)
                return found[label]

            jobs: dict[tuple, dict[str, tuple]] = {}  # test set's shape -> name -> (estimate, replicates' key)
            matrices: dict[tuple, np.ndarray] = {}
            for name, per in wanted.items():
                if dataset not in per:
                    continue
                paired = per[dataset][1] is not None
                a, b = cell(per[dataset][0]), (cell(per[dataset][1]) if paired else None)
                if a is None or (paired and (b is None or a[0] != b[0] or a[1].shape != b[1].shape)):
                    out[name][dataset] = None
                    continue
                if b is None:
                    estimate = 100.0 * a[1].mean()
                else:
                    estimate = 100.0 * (a[1].astype(np.float32) - b[1].astype(np.float32)).mean()
                    matrices[b[2]] = b[1]
                matrices[a[2]] = a[1]
                key = (seed, dataset, metric, reps, a[2], None if b is None else b[2])
                jobs.setdefault(a[1].shape, {})[name] = (estimate, key)
            for shape, named in jobs.items():
                todo = [key for key in dict.fromkeys(key for _, key in named.values()) if key not in self._replicates]
                self._draw(self.resampler(seed, dataset, metric, *shape, reps), todo, matrices)
                for name, (estimate, key) in named.items():
                    out[name][dataset] = (estimate, self._replicates[key])
        return out

    def _draw(self, draws: Resampler, keys: list[tuple], matrices: dict[tuple, np.ndarray]) -> None:
        """Replicates of every key (its cell, or pair of cells), some ``_STACK`` trials' scores at a time."""
        while keys:
            chunk, cells = [], {}
            while keys and (not chunk or max(len(cells), len(chunk)) * draws.n_seeds < _STACK):
                key = keys.pop(0)
                chunk.append(key)
                for cell in key[4:]:
                    if cell is not None:
                        cells.setdefault(cell, len(cells))
            got = draws.paired_replicates([matrices[c] for c in cells],
                                          [(cells[k[4]], None if k[5] is None else cells[k[5]]) for k in chunk])
            self._replicates.update(zip(chunk, got))


def _cells(rows: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """(row label, dataset) -> that cell's rows (the columns that find its predictions)."""
    key = label_column(rows)
    slim = rows[[key, "dataset", "seed", "trial_id"]]
    return {k: group for k, group in slim.groupby([key, "dataset"], sort=False)}


def _with_average(per_dataset: dict[str, tuple[float, np.ndarray] | None], columns: list[str],
                  level: float, averaged: list[str]) -> dict[str, Interval | None]:
    """Each dataset's interval, and the Average's over the ``averaged`` datasets (as the table's Average)."""
    out = {d: (interval(*v, level) if v is not None else None) for d, v in per_dataset.items()}
    if "Average" in columns:
        parts = [per_dataset.get(d) for d in averaged]
        out["Average"] = (interval(np.mean([p[0] for p in parts]), np.mean([p[1] for p in parts], axis=0), level)
                          if parts and all(p is not None for p in parts) else None)
    return out


def accuracy_intervals(rows: pd.DataFrame, scores: PredictionScores, metric: str = "top1",
                       reps: int = DEFAULT_REPS, seed: int = 0, level: float = LEVEL) -> pd.DataFrame:
    """Intervals of the mean accuracy per (row label, dataset) and the Average, for rows of one shot count;
    a frame of :class:`Interval` (None where predictions are missing)."""
    key = label_column(rows)
    datasets = list(dict.fromkeys(rows["dataset"]))
    wanted = {label: {d: (label, None) for d in datasets} for label in dict.fromkeys(rows[key])}
    got = scores.estimates(_cells(rows), wanted, metric, reps, seed)
    averaged = averaged_columns(rows, datasets)
    table = {label: _with_average(got[label], [*datasets, "Average"], level, averaged) for label in wanted}
    return pd.DataFrame(table).T.reindex(columns=[*datasets, "Average"])


def gain_intervals(rows: pd.DataFrame, gains: pd.DataFrame, scores: PredictionScores, metric: str = "top1",
                   reps: int = DEFAULT_REPS, seed: int = 0, level: float = LEVEL) -> pd.DataFrame:
    """Paired intervals for every gain row "A vs B" of one shot count's table (same index and columns as
    ``gains``; None where a cell has no interval)."""
    columns = list(gains.columns)
    datasets = [c for c in columns if c != "Average"]
    wanted = {name: {d: tuple(str(name).split(" vs ", 1)) for d in datasets} for name in gains.index}
    got = scores.estimates(_cells(rows), wanted, metric, reps, seed)
    averaged = averaged_columns(rows, datasets)
    table = {name: _with_average(got[name], columns, level, averaged) for name in gains.index}
    return pd.DataFrame(table, columns=list(gains.index)).T.reindex(index=gains.index, columns=columns)
