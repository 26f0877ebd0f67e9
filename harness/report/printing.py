"""A run's report on the terminal or as text: its tables (table, markdown, csv or latex) with the lines under
them, the published numbers beside them, and the figures and HTML page written to files."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from ..console import err, out
from ..errors import BenchError

if TYPE_CHECKING:  # the command imports this module: pandas and pyarrow load only once a report is made
    import pandas as pd

    from ..results import RunFolder


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    latex = "latex"


# datasets per block of a compared table on the terminal: 1 + 3 x 4 columns fit 200 characters uncut
COMPARED_PER_BLOCK = 4


def scores(folder: RunFolder):
    from .intervals import PredictionScores

    return PredictionScores(folder.read_predictions, folder.prediction_batches)


def print_report(rows: pd.DataFrame, shots: int | None, fmt: Format, std: bool, compare: str | None = None,
                 scores=None, run: str = "") -> None:
    for title, header, body, gain, footer, k, mean, metric in report_tables(rows, shots, std, scores, run):
        emit(title, header, body, gain, fmt)
        for line in footer:
            note(line, fmt)
        if compare:
            print_comparison(rows, mean, k, fmt, metric)


def note(line: str, fmt: Format) -> None:
    """A line of prose beside a table: with it on the terminal and in markdown, on stderr beside the data
    formats (csv, latex)."""
    (out if fmt in (Format.table, Format.markdown) else err).print(line, markup=False, highlight=False,
                                                                   soft_wrap=True)


def report_tables(rows: pd.DataFrame, shots: int | None, std: bool, scores=None, run: str = ""):
    """(title, header, body, gain rows, footer lines, shots, mean table, metric) per metric and shot count;
    gain rows carry paired-bootstrap intervals where the trials kept their predictions (``scores``)."""
    from .intervals import gain_intervals
    from .tables import gain_rows, metrics_of, protocol_tables, selection_groups, table_footer, table_rows, \
        text_rows

    every = rows
    rows, aside = table_rows(rows)
    if aside:
        err.print(f"note: {aside}", highlight=False, soft_wrap=True)
    if rows.empty:
        raise BenchError("no rows left to report after setting aside rows made on other data")
    for chosen, part in selection_groups(rows):  # oracle rows apart from the others
        for metric, caption in metrics_of(part):
            for k, (mean, sd) in protocol_tables(part, shots, metric).items():
                gains = gain_rows(mean)
                ci = gain_intervals(part[(part.status == "ok") & (part.shots == k)], gains, scores, metric) \
                    if scores is not None and len(gains) else None
                title = f"{k}-shot {caption}, mean over seeds{chosen}"
                if ci is not None and ci.notna().any().any():
                    title += "; gains [95% paired-bootstrap interval], * = excludes 0"
                footer = table_footer(every, part, mean, k, run)
                yield (title, *text_rows(mean, sd if std else None, gains, ci), footer, k, mean, metric)


def print_comparison(rows: pd.DataFrame, mean: pd.DataFrame, shots: int, fmt: Format, metric: str = "top1") -> None:
    """The run's table beside the published numbers of its protocol and metric, per backbone; under each, the
    published cells' caveats and why rows have no paper value. The terminal gets blocks of datasets, the
    other formats one complete table."""
    from ..published import load_published
    from .tables import comparison_rows, paper_comparisons

    what = "" if metric == "top1" else f" {metric}"
    unpublished = [d for d in mean.columns if d != "Average" and d not in set(load_published()["dataset"])]
    if unpublished:
        out.print(f"{shots}-shot: no published numbers exist for {', '.join(unpublished)} (not a dataset of the "
                  "papers: bench's generated data or your own)", markup=False, highlight=False, soft_wrap=True)
    for comparison in paper_comparisons(rows, mean, shots, metric):
        title = f"{shots}-shot{what}: this run vs published ({comparison.backbone or 'no published model'})"
        table = comparison.table
        has_paper = [d for d in dict.fromkeys(d for d, _ in table.columns) if table[(d, "paper")].notna().any()]
        if not has_paper:
            out.print(f"{title}: no published numbers for these methods and datasets", highlight=False)
        elif fmt == Format.table:
            for start in range(0, len(has_paper), COMPARED_PER_BLOCK):
                block = has_paper[start:start + COMPARED_PER_BLOCK]
                header, body = comparison_rows(comparison, block)
                part = f" ({start // COMPARED_PER_BLOCK + 1}/{-(-len(has_paper) // COMPARED_PER_BLOCK)})" \
                    if len(has_paper) > COMPARED_PER_BLOCK else ""
                emit(title + part, [h.replace(" ", "\n", 1) for h in header], body, [], fmt)
        else:
            emit(title, *comparison_rows(comparison, has_paper), [], fmt)
        lines = [f"paper: {n}" for n in comparison.notes] if has_paper else []
        by_reason: dict[str, list[str]] = {}
        for label, why in comparison.no_paper.items():
            by_reason.setdefault(why, []).append(label)
        lines += [f"no paper value for {', '.join(labels)}: {why}" for why, labels in by_reason.items()]
        for line in lines:
            out.print(("# " if fmt == Format.csv else "") + line, markup=False, highlight=False,
                      soft_wrap=fmt != Format.table)
        if lines and fmt == Format.markdown:
            out.print()


def emit(title: str, header: list, body: list, gain: list, fmt: Format) -> None:
    from .tables import render, rich_tables

    if fmt == Format.table:
        for table in rich_tables(title, header, body, gain, out):
            out.print(table)
    else:
        out.print(render(title, header, body, gain, fmt.value), end="", markup=False, highlight=False,
                  soft_wrap=True)


def print_errors(rows: pd.DataFrame, run: str) -> None:
    from rich.table import Table

    from .tables import errors_table

    bad = errors_table(rows)
    table = Table(title=f"failed trials of {run}: {len(bad)}", title_justify="left")
    for col in ("trial_id", "dataset", "shots", "seed", "stack", "error"):
        table.add_column(col, overflow="fold")
    for r in bad:
        table.add_row(*r)
    out.print(table)


def write_figures_and_html(rows: pd.DataFrame, folder: RunFolder, scores, shots: int | None, std: bool,
                           plot: Path | None, html_path: Path | None) -> None:
    from ..selection import ORACLE
    from ..tune import search_table
    from .figures import report_figures, save_figures
    from .html import html_document, write_html
    from .tables import errors_table, selections, table_rows

    chosen, _ = table_rows(rows)
    chosen = chosen[selections(chosen) != ORACLE]  # test-selected rows are kept out of the figures
    chosen = chosen if shots is None else chosen[chosen.shots == shots]
    figures = report_figures(chosen, scores, folder.artifact_dir)
    for path in save_figures(figures, plot) if plot else []:
        err.print(f"wrote {path}")
    if html_path:
        tables = [t[:5] for t in report_tables(rows, shots, std, scores, folder.run)]
        document = html_document(folder.run, tables, figures, rows, errors_table(rows), search=search_table(folder))
        err.print(f"wrote {write_html(html_path, document)}")
