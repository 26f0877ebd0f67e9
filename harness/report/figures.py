"""Figures of a run: accuracies (dots with intervals for one shot count, curves for several), the gains of
``X+mask`` over ``X`` with their intervals, and where the learned masks switch weights off.

Every row label gets its own colour and marker; a base stack and its ``+mask`` variant share hue and
marker shape (base: lighter shade, hollow marker, dashed line; ``+mask``: full shade, filled, solid), and
``mask`` alone pairs with ``zeroshot``, the head it tunes against. Figures are built with matplotlib's
object API (no pyplot state), so building many never leaks memory or needs a display.
"""
from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from ..errors import BenchError
from .intervals import PredictionScores, accuracy_intervals, gain_intervals, label_column
from ..registry import get_method, methods
from .tables import _dataset_order, _label_order as _stack_order, _split_stack, accuracy_tables, gain_rows

MARKERS = "osD^vP*Xh<>pd"
_GREY = (0.35, 0.35, 0.35)


# -- styles ------------------------------------------------------------------------------------------
def baseline() -> str:
    """The method every stack is compared with (the one declaring ``gain_baseline``: zero-shot)."""
    return next((name for name, m in methods().items() if m.gain_baseline), "")


def family(stack: str) -> str:
    """The stack a stack pairs with, without its ``stacked_gain`` methods: ``coop+mask`` -> ``coop``;
    ``mask`` alone -> the baseline (zero-shot)."""
    return _split_stack(stack)[0] or baseline()


def stacked(stack: str) -> bool:
    return _split_stack(stack)[1]


def _lighter(colour, amount: float = 0.5) -> tuple:
    return tuple(c + (1 - c) * amount for c in to_rgb(colour))


def ordered_labels(rows: pd.DataFrame) -> list[str]:
    key = label_column(rows)
    stack_of = dict(zip(rows[key], rows["stack"]))
    rank = {s: i for i, s in enumerate(_stack_order(stack_of.values()))}
    return sorted(stack_of, key=lambda label: (rank[stack_of[label]], label))


def stack_styles(rows: pd.DataFrame) -> dict[str, dict]:
    """Matplotlib keyword styles per row label (colour, marker, fill, line style), all distinct."""
    key = label_column(rows)
    stack_of = dict(zip(rows[key], rows["stack"]))
    labels = ordered_labels(rows)
    families = list(dict.fromkeys(family(stack_of[label]) for label in labels))
    hues = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]  # tab10's grey is zeroshot's
    extra = iter(colormaps["Dark2"].colors + colormaps["Set1"].colors)
    base_colour = {}
    for i, fam in enumerate(f for f in families if f != baseline()):
        base_colour[fam] = hues[i] if i < len(hues) else next(extra, colormaps["hsv"](i / len(families)))
    base_colour[baseline()] = _GREY
    styles, members = {}, {}
    for label in labels:
        fam = family(stack_of[label])
        members.setdefault(fam, []).append(label)
    used_markers = set()
    for f_index, fam in enumerate(families):
        group = members[fam]
        paired = len(group) > 1
        for m_index, label in enumerate(group):
            masked = stacked(stack_of[label])
            colour = base_colour[fam]
            if m_index > 1:  # a third variant of a family (a label with other settings): a colour of its own
                colour = next(extra, colormaps["hsv"]((f_index + m_index / 7) / len(families)))
            elif paired and not masked:
                colour = _lighter(colour, 0.45)
            shape = MARKERS[(f_index + (m_index // 2) * len(families)) % len(MARKERS)]
            filled = masked or not paired
            if (shape, filled) in used_markers:
                shape = next(m for m in MARKERS if (m, filled) not in used_markers)
            used_markers.add((shape, filled))
            styles[label] = {"color": tuple(float(c) for c in to_rgb(colour)), "marker": shape,
                             "markerfacecolor": to_rgb(colour) if filled else "white",
                             "linestyle": "-" if filled else "--"}
    return styles


# -- accuracy ----------------------------------------------------------------------------------------
def accuracy_figure(rows: pd.DataFrame, scores: PredictionScores | None = None, metric: str = "top1",
                    caption: str = "top-1 (%)") -> Figure:
    """Dots with 95 % intervals (stacks x datasets) for one shot count, few-shot curves for several."""
    ok = rows[rows["status"] == "ok"]
    if ok["shots"].nunique() == 1:
        return dots_figure(ok, scores, metric, caption)
    return curves_figure(ok, metric, caption)


def dots_figure(ok: pd.DataFrame, scores: PredictionScores | None, metric: str, caption: str) -> Figure:
    mean, std = next(iter(accuracy_tables(ok, None, metric).values()))
    ci = accuracy_intervals(ok, scores, metric) if scores is not None else None
    labels = [label for label in ordered_labels(ok) if label in mean.index]
    styles = stack_styles(ok)
    columns = list(mean.columns)
    fig = Figure(figsize=(max(7.0, 1.6 + len(columns) * (0.35 + 0.11 * len(labels))), 4.6))
    ax = fig.subplots()
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        x = np.arange(len(columns)) - 0.4 + width * (i + 0.5)
        y = mean.loc[label, columns].to_numpy(float)
        low, high = _bars(y, ci.loc[label, columns] if ci is not None and label in ci.index else None,
                          std.loc[label, columns].to_numpy(float))
        ax.errorbar(x, y, yerr=[low, high], ls="none", capsize=2, ms=6, label=label, **_no_line(styles[label]))
    for edge in np.arange(len(columns) - 1) + 0.5:
        ax.axvline(edge, color="0.85", lw=0.8)
    ax.set_xticks(np.arange(len(columns)), columns, rotation=20, ha="right")
    ax.set_xlim(-0.5, len(columns) - 0.5)
    ax.set_ylabel(caption)
    shots = int(ok["shots"].iloc[0])
    how = "95 % paired-bootstrap intervals" if ci is not None and ci.notna().any().any() else "± std over seeds"
    ax.set_title(f"{shots}-shot {caption}, {ok['seed'].nunique()} seed(s); bars: {how}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    _legend(fig, ax, len(labels))
    return fig


def _no_line(style: dict) -> dict:
    return {k: v for k, v in style.items() if k != "linestyle"}


def _bars(y: np.ndarray, ci: pd.Series | None, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Error bar extents below and above each point: the bootstrap interval, else the std over seeds."""
    if ci is not None and ci.notna().any():
        low = np.array([v - c.low if c is not None and c == c else np.nan for v, c in zip(y, ci)])
        high = np.array([c.high - v if c is not None and c == c else np.nan for v, c in zip(y, ci)])
        return np.nan_to_num(low), np.nan_to_num(high)
    spread = np.nan_to_num(std)
    return spread, spread


def curves_figure(ok: pd.DataFrame, metric: str, caption: str) -> Figure:
    """Few-shot curves: accuracy vs shots (± std over seeds), one panel per dataset plus the average."""
    key = label_column(ok)
    datasets = [d for d in _dataset_order(ok) if d in set(ok.dataset)]
    per_seed = ok.groupby([key, "dataset", "shots"])[metric].agg(["mean", "std"]).reset_index()
    panels = datasets + ["Average"]
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4 * cols, 3.3 * nrows + 0.6))
    axes = fig.subplots(nrows, cols, squeeze=False)
    styles = stack_styles(ok)
    labels = ordered_labels(ok)
    for ax, panel in zip(axes.flat, panels):
        for label in labels:
            sub = per_seed[per_seed[key] == label]
            if panel == "Average":
                piv = sub.pivot(index="shots", columns="dataset", values="mean").reindex(columns=datasets)
                curve = piv.mean(axis=1, skipna=False).dropna()
                x, y, e = curve.index, curve.values, None
            else:
                sub = sub[sub.dataset == panel].sort_values("shots")
                x, y, e = sub.shots, sub["mean"], sub["std"].fillna(0)
            if len(x):
                ax.errorbar(x, y, yerr=e, label=label, ms=4, capsize=2, **styles[label])
        ax.set_title(panel)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("shots per class")
        ax.set_ylabel(caption)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    _legend(fig, axes.flat[0], len(labels))
    return fig


def _legend(fig: Figure, ax, n: int) -> None:
    handles, labels = ax.get_legend_handles_labels()
    longest = max((len(label) for label in labels), default=10)
    ncol = max(1, min(n, 6, int(fig.get_figwidth() / (0.085 * longest + 0.7))))
    rows = math.ceil(n / max(ncol, 1))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, min(0.35, 0.05 + 0.045 * rows * 4.6 / fig.get_figheight()), 1, 1))


# -- gains -------------------------------------------------------------------------------------------
def mask_gains(rows: pd.DataFrame, mean: pd.DataFrame) -> pd.DataFrame:
    """The gain rows of ``X+mask`` over ``X`` (``mask`` over ``zeroshot``) of one table."""
    key = label_column(rows)
    stack_of = dict(zip(rows[key], rows["stack"]))
    gains = gain_rows(mean)
    keep = []
    for name in gains.index:
        a, b = str(name).split(" vs ", 1)
        sa, sb = stack_of.get(a, a), stack_of.get(b, b)
        if stacked(sa) and family(sa) == sb:
            keep.append(name)
    return gains.loc[keep]


def gains_figure(rows: pd.DataFrame, scores: PredictionScores | None = None, metric: str = "top1") -> Figure | None:
    """Each ``X+mask`` minus ``X`` per dataset and Average, one panel per shot count, with 95 % intervals."""
    ok = rows[rows["status"] == "ok"]
    tables = accuracy_tables(ok, None, metric)
    panels = [(k, mean, mask_gains(ok, mean)) for k, (mean, _) in tables.items()]
    panels = [p for p in panels if len(p[2])]
    if not panels:
        return None
    styles = stack_styles(ok)
    key = label_column(ok)
    stack_of = dict(zip(ok[key], ok["stack"]))
    width_cols = max(len(p[1].columns) for p in panels)
    fig = Figure(figsize=(max(7.0, 1.6 + width_cols * 0.9), 3.2 * len(panels) + 0.8))
    axes = np.atleast_1d(fig.subplots(len(panels), 1, squeeze=False)[:, 0])
    for ax, (k, mean, gains) in zip(axes, panels):
        ci = gain_intervals(ok[ok["shots"] == k], gains, scores, metric) if scores is not None else None
        columns = list(gains.columns)
        width = 0.8 / len(gains)
        for i, name in enumerate(gains.index):
            a = str(name).split(" vs ", 1)[0]
            x = np.arange(len(columns)) - 0.4 + width * (i + 0.5)
            y = gains.loc[name, columns].to_numpy(float)
            low, high = _bars(y, ci.loc[name, columns] if ci is not None else None, np.zeros_like(y))
            style = _no_line(styles.get(a, {"color": "k", "marker": "o"}))
            ax.errorbar(x, y, yerr=[low, high], ls="none", capsize=2, ms=6, label=f"{a} − {family(stack_of.get(a, a))}",
                        **style)
        ax.axhline(0, color="k", lw=0.8)
        for edge in np.arange(len(columns) - 1) + 0.5:
            ax.axvline(edge, color="0.85", lw=0.8)
        ax.set_xticks(np.arange(len(columns)), columns, rotation=20, ha="right")
        ax.set_xlim(-0.5, len(columns) - 0.5)
        ax.set_ylabel("gain (points)")
        has_ci = ci is not None and ci.notna().any().any()
        ax.set_title(f"{k}-shot: each stack minus its base" + ("; bars: 95 % paired-bootstrap intervals" if has_ci else ""),
                     fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    _legend(fig, axes[0], len(panels[0][2]))
    return fig


# -- masks -------------------------------------------------------------------------------------------
_BLOCK = re.compile(r"resblocks\.(\d+)\.(.+)$")


def tensor_place(name: str) -> tuple[int, str]:
    """(block, tensor) of a masked weight's name: ``transformer.resblocks.3.attn.in_proj_weight`` ->
    (3, "in_proj"); the patch embedding ``conv1.weight`` -> (-1, "conv1")."""
    match = _BLOCK.search(name)
    if not match:
        return -1, name.removesuffix(".weight")
    tensor = re.sub(r"[._]weight$", "", match.group(2)).removeprefix("attn.")
    return int(match.group(1)), tensor


def mask_shares(rows: pd.DataFrame, artifact_dir: Callable[[str], Path | None]) -> pd.DataFrame:
    """% of weights switched off per trial and tensor, from what each trial's methods saved
    (``Method.switched_off``, e.g. mask's bit-packed masks): columns dataset, shots, seed, trial_id, block,
    tensor, off."""
    out = []
    ok = rows.loc[rows["status"] == "ok", ["trial_id", "stack", "dataset", "shots", "seed"]]
    for row in ok.itertuples(index=False):
        folder = artifact_dir(row.trial_id)
        if folder is None or not Path(folder).is_dir():
            continue
        for part in row.stack.split("+"):
            try:
                shares = get_method(part).switched_off(Path(folder)) or {}
            except BenchError:  # a plugin no longer installed
                shares = {}
            for name, off in shares.items():
                block, tensor = tensor_place(name)
                out.append({"dataset": row.dataset, "shots": int(row.shots), "seed": int(row.seed),
                            "trial_id": row.trial_id, "method": part, "block": block, "tensor": tensor,
                            "off": off})
    return pd.DataFrame(out, columns=["dataset", "shots", "seed", "trial_id", "method", "block", "tensor", "off"])


def masks_figure(rows: pd.DataFrame, artifact_dir: Callable[[str], Path | None]) -> Figure | None:
    """Heat map: share of weights switched off (%) per dataset (and shot count) x block and tensor,
    the mean over the saved masks of that cell's ``mask`` trials."""
    shares = mask_shares(rows, artifact_dir)
    if shares.empty:
        return None
    several = shares["shots"].nunique() > 1
    methods = list(dict.fromkeys(shares["method"]))
    shares["where"] = [("patch " if b < 0 else f"block {b} ") + t for b, t in zip(shares.block, shares.tensor)]
    shares["cell"] = [(f"{d} ({k}-shot)" if several else d) + (f" {m}" if len(methods) > 1 else "")
                      for d, k, m in zip(shares.dataset, shares.shots, shares.method)]
    order_cols = shares.drop_duplicates("where").sort_values(["block", "tensor"])["where"].tolist()
    datasets = [d for d in _dataset_order(rows) if d in set(shares.dataset)]
    order_rows = [c for d in datasets for k in sorted(set(shares.shots)) for m in methods
                  for c in [(f"{d} ({k}-shot)" if several else d) + (f" {m}" if len(methods) > 1 else "")]
                  if c in set(shares.cell)]
    grid = shares.pivot_table(index="cell", columns="where", values="off", aggfunc="mean")
    grid = grid.reindex(index=list(dict.fromkeys(order_rows)), columns=order_cols)
    fig = Figure(figsize=(max(6.0, 1.8 + 0.55 * grid.shape[1]), max(2.6, 1.4 + 0.35 * grid.shape[0])))
    ax = fig.subplots()
    values = grid.to_numpy(float)
    image = ax.imshow(values, aspect="auto", cmap="magma_r", vmin=0, vmax=max(float(np.nanmax(values)), 1e-3))
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
    if grid.size <= 400:
        top = np.nanmax(grid.to_numpy(float)) or 1.0
        for (i, j), value in np.ndenumerate(grid.to_numpy(float)):
            if value == value:
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if value > 0.6 * top else "black")
    fig.colorbar(image, ax=ax, label="% of the tensor switched off")
    n = shares["trial_id"].nunique()
    ax.set_title(f"Where the masks fall (mean over {n} trials' saved masks)", fontsize=10)
    fig.tight_layout()
    return fig


# -- speed -------------------------------------------------------------------------------------------
def speed_points(rows: pd.DataFrame, metric: str = "top1") -> tuple[pd.DataFrame, dict]:
    """Per row label at the largest shot count: the mean over datasets of its seed-mean accuracy, and the
    median images/s of its trials, on the device most of the timed trials used. Returns the points
    (columns label, accuracy, images_per_s, trials) and what they were measured on."""
    ok = rows[(rows["status"] == "ok")]
    if "infer_images_per_s" not in ok:
        return pd.DataFrame(columns=["label", "accuracy", "images_per_s", "trials"]), {}
    ok = ok[ok["infer_images_per_s"].notna()]
    if ok.empty:
        return pd.DataFrame(columns=["label", "accuracy", "images_per_s", "trials"]), {}
    device = ok["device"].mode().iloc[0]
    shots = int(ok["shots"].max())
    ok = ok[(ok["device"] == device) & (ok["shots"] == shots)]
    key = label_column(ok)
    points = []
    for label, group in ok.groupby(key):
        per_dataset = group.groupby("dataset")[metric].mean()
        points.append({"label": label, "accuracy": float(per_dataset.mean()),
                       "images_per_s": float(group["infer_images_per_s"].median()), "trials": len(group)})
    about = {"device": device, "shots": shots, "datasets": ok["dataset"].nunique(),
             "batch": sorted(set(ok["infer_batch_size"].dropna().astype(int)))}
    return pd.DataFrame(points), about


def speed_figure(rows: pd.DataFrame, metric: str = "top1", caption: str = "top-1 (%)") -> Figure | None:
    """Accuracy against test-time throughput, one point per row label (R-AMT's Fig. 1): the mean over
    datasets at the largest shot count against the median images/s of the label's trials."""
    points, about = speed_points(rows, metric)
    if points.empty:
        return None
    ok = rows[rows["status"] == "ok"]
    styles = stack_styles(ok)
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.subplots()
    for point in points.itertuples(index=False):
        style = _no_line(styles.get(point.label, {"color": "k", "marker": "o"}))
        ax.plot([point.images_per_s], [point.accuracy], ls="none", ms=8, label=point.label, **style)
    speeds = points["images_per_s"]
    if speeds.max() > 10 * speeds.min():  # a log axis only where the speeds span a decade, in plain numbers
        from matplotlib.ticker import NullFormatter, StrMethodFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"inference throughput (images/s, {about['device']}, batch {', '.join(map(str, about['batch']))})")
    ax.set_ylabel(f"{caption}, mean of {about['datasets']} dataset(s)")
    title = f"{about['shots']}-shot accuracy vs inference speed (median over trials)"
    if about["device"] == "cpu":  # one shared CPU's timings: the noise of a run is as large as most gaps
        title += "\nCPU timings of one run vary between runs: read as rough, not as differences"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    _legend(fig, ax, len(points))
    return fig


# -- all figures of a report -------------------------------------------------------------------------
def report_figures(rows: pd.DataFrame, scores: PredictionScores | None = None,
                   artifact_dir: Callable[[str], Path | None] | None = None) -> dict[str, Figure]:
    """{name: figure} for a run: ``accuracy`` always, ``gains`` when +mask pairs ran, ``masks`` when
    mask files are there, ``speed`` (accuracy vs images/s) when trials timed their classifier."""
    figures = {"accuracy": accuracy_figure(rows, scores)}
    speed = speed_figure(rows)
    if speed is not None:
        figures["speed"] = speed
    gains = gains_figure(rows, scores)
    if gains is not None:
        figures["gains"] = gains
    masks = masks_figure(rows, artifact_dir) if artifact_dir is not None else None
    if masks is not None:
        figures["masks"] = masks
    return figures


def save_figures(figures: dict[str, Figure], path: Path) -> list[Path]:
    """The accuracy figure at ``path``, the others beside it as ``<stem>_<name><suffix>``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        target = path if name == "accuracy" else path.with_name(f"{path.stem}_{name}{path.suffix or '.png'}")
        fig.savefig(target, dpi=120)
        written.append(target)
    return written


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
