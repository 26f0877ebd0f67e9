"""Paper-style tables from a run's rows: stacks x datasets (+ Average) per shot count, and gain rows
(with paired-bootstrap intervals when the trials kept their predictions, see :mod:`bench.intervals`)."""
from __future__ import annotations

import math

import pandas as pd

from .errors import BenchError
from .results import RunFolder, list_runs

MASK = "mask"


def load_rows(results: str, run: str) -> pd.DataFrame:
    folder = RunFolder(results, run)
    if not folder.exists():
        runs = list_runs(results)
        hint = f"runs here: {', '.join(runs)}" if runs else "run `bench run` first"
        raise BenchError(f"no run '{run}' under {results}; {hint}")
    rows = folder.read()
    if rows.empty:
        raise BenchError(f"run '{run}' has no rows yet; run `bench run --run {run}` first")
    return expand_shift(rows)


def expand_shift(rows: pd.DataFrame) -> pd.DataFrame:
    """Domain-shift rows carry the target datasets' accuracies in ``extras``: one table column each."""
    import json

    extra = []
    for row in rows[(rows["protocol"] == "shift") & (rows["status"] == "ok")].itertuples(index=False):
        for key, value in json.loads(row.extras or "{}").items():
            if key.startswith("top1."):
                extra.append({**row._asdict(), "dataset": key[len("top1."):], "top1": value})
    return pd.concat([rows, pd.DataFrame(extra, columns=rows.columns)], ignore_index=True) if extra else rows


def metrics_of(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, caption) pairs the report shows: base/new/HM for base-to-new runs, top-1 otherwise."""
    if (rows["protocol"] == "base2new").any():
        return [("top1", "base-class top-1 (%)"), ("top1_new", "new-class top-1 (%)"), ("hm", "harmonic mean")]
    return [("top1", "top-1 (%)")]


def _dataset_order(rows: pd.DataFrame) -> list[str]:
    from .suite import builtin_suites, load_suite

    present = list(dict.fromkeys(rows["dataset"]))
    suite = rows["suite"].dropna().iloc[0] if rows["suite"].notna().any() else None
    order = load_suite(suite).datasets if suite in builtin_suites() else []
    return [d for d in order if d in present] + sorted(d for d in present if d not in order)


def _stack_order(stacks) -> list[str]:
    def key(stack: str):
        parts = stack.split("+")
        base = "+".join(p for p in parts if p != MASK) or MASK
        rank = {"zeroshot": 0, "linear_probe": 1, MASK: 2}.get(base, 3)
        return rank, base, MASK in parts and base != MASK

    return sorted(set(stacks), key=key)


def accuracy_tables(rows: pd.DataFrame, shots: int | None = None, metric: str = "top1"):
    """{shots: (mean table, std table)}; rows = stacks, columns = datasets + Average (mean over seeds)."""
    ok = rows[rows["status"] == "ok"]
    if shots is not None:
        ok = ok[ok["shots"] == shots]
        if ok.empty:
            have = sorted(set(rows["shots"].dropna().astype(int)))
            raise BenchError(f"no ok rows with {shots} shots in this run; shots present: {have}")
    datasets = _dataset_order(rows[rows["dataset"].isin(set(ok["dataset"]))])
    out = {}
    for k, group in ok.groupby("shots"):
        grouped = group.groupby(["stack", "dataset"])[metric]
        mean = grouped.mean().unstack("dataset").reindex(columns=[d for d in datasets if d in set(group.dataset)])
        std = grouped.std(ddof=0).unstack("dataset").reindex(columns=mean.columns)
        order = _stack_order(mean.index)
        mean, std = mean.reindex(order), std.reindex(order)
        mean["Average"] = mean.mean(axis=1, skipna=False)
        std["Average"] = float("nan")
        out[int(k)] = (mean, std)
    return out


def gain_rows(mean: pd.DataFrame) -> pd.DataFrame:
    """'X+mask vs X' for every masked stack whose base ran, and 'S vs zeroshot' for every method."""
    gains = {}
    for stack in mean.index:
        parts = stack.split("+")
        if MASK in parts and len(parts) > 1:
            base = "+".join(p for p in parts if p != MASK)
            if base in mean.index:
                gains[f"{stack} vs {base}"] = mean.loc[stack] - mean.loc[base]
    if "zeroshot" in mean.index:
        for stack in mean.index:
            if stack != "zeroshot":
                gains[f"{stack} vs zeroshot"] = mean.loc[stack] - mean.loc["zeroshot"]
    return pd.DataFrame(gains).T.reindex(columns=mean.columns)


# -- rendering ---------------------------------------------------------------------------------------
def _cell(value: float, std: float | None = None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:+.2f}" if signed else f"{value:.2f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std:.2f}"
    return text


def _gain_cell(value: float, ci) -> str:
    """A gain with its interval, ``+10.3 [+8.1, +12.6]``, starred when the interval excludes 0."""
    if ci is None or (isinstance(value, float) and math.isnan(value)):
        return _cell(value, signed=True)
    return f"{value:+.1f} [{ci.low:+.1f}, {ci.high:+.1f}]" + ("*" if ci.excludes_zero else "")


def text_rows(mean: pd.DataFrame, std: pd.DataFrame | None, gains: pd.DataFrame,
              intervals: pd.DataFrame | None = None) -> tuple[list, list, list]:
    header = ["method", *mean.columns]
    body = [[stack, *(_cell(mean.at[stack, c], None if std is None else std.at[stack, c]) for c in mean.columns)]
            for stack in mean.index]
    gain = [[label, *(_gain_cell(gains.at[label, c], None if intervals is None else intervals.at[label, c])
                      for c in gains.columns)] for label in gains.index]
    return header, body, gain


def render(title: str, header: list, body: list, gain: list, fmt: str) -> str:
    if fmt == "markdown":
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body + gain]
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        frame = pd.DataFrame(body + gain, columns=header)
        frame.insert(0, "table", title)
        return frame.to_csv(index=False)
    if fmt == "latex":
        esc = lambda s: str(s).replace("_", r"\_").replace("±", r"$\pm$")  # noqa: E731
        lines = [f"% {title}", r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
                 " & ".join(map(esc, header)) + r" \\", r"\midrule"]
        lines += [" & ".join(map(esc, r)) + r" \\" for r in body]
        if gain:
            lines += [r"\midrule"] + [" & ".join(map(esc, r)) + r" \\" for r in gain]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise BenchError(f"unknown format '{fmt}'; use table, markdown, csv or latex")


def rich_table(title: str, header: list, body: list, gain: list):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", style="bold" if name == "Average" else None)
    for r in body:
        table.add_row(*r)
    if gain:
        table.add_section()
        for r in gain:
            table.add_row(*r, style="dim")
    return table


def errors_table(rows: pd.DataFrame) -> list[list[str]]:
    bad = rows[rows["status"] != "ok"]
    return [[str(r.trial_id), r.dataset, str(r.shots), str(r.seed), r.stack, str(r.error)]
            for r in bad.itertuples()]
