"""The `bench` command: run, report, list (and data)."""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
import sys
import typing
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .errors import BenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark few-shot adaptation methods for CLIP models.")
from .console import err, out  # noqa: E402

DEFAULT_RESULTS = os.environ.get("BENCH_RESULTS", "results")


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    latex = "latex"


class Kind(str, Enum):
    methods = "methods"
    suites = "suites"
    datasets = "datasets"
    models = "models"
    protocols = "protocols"


def _split(text: Optional[str]) -> Optional[list[str]]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@app.command()
def run(
    suite: str = typer.Option("synthetic", help="Suite name or path to a .toml suite file."),
    methods: Optional[str] = typer.Option(None, help="Comma list of method stacks, e.g. mask,coop+mask."),
    datasets: Optional[str] = typer.Option(None, help="Comma list of datasets (default: the suite's)."),
    shots: Optional[str] = typer.Option(None, help="Comma list of shot counts, e.g. 1,2,4."),
    seeds: Optional[str] = typer.Option(None, help="Comma list of seeds, e.g. 1,2,3."),
    model: Optional[str] = typer.Option(None, help="open_clip model name (default: the suite's)."),
    pretrained: Optional[str] = typer.Option(None, help="Pretrained tag or checkpoint path."),
    data_root: Optional[str] = typer.Option(None, help="Folder holding the datasets in CoOp's layout."),
    run_name: Optional[str] = typer.Option(None, "--run", help="Run name (default: the suite's name)."),
    results: str = typer.Option(DEFAULT_RESULTS, help="Results folder or pyarrow filesystem URI."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when visible)."),
    gpus_per_trial: Optional[float] = typer.Option(None, help="GPUs per trial (fractions allowed)."),
    cpus_per_trial: Optional[float] = typer.Option(None, help="CPUs per trial (fractions allowed)."),
    max_concurrent: Optional[int] = typer.Option(None, help="Most trials running at once."),
    address: Optional[str] = typer.Option(None, help="Address of a running Ray cluster to join."),
    set_: List[str] = typer.Option([], "--set", help="Method setting METHOD.KEY=VALUE (repeatable)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Re-run only the trials that failed."),
    cache_dir: Optional[str] = typer.Option(None, help="Feature and stage cache shared by trials and runs "
                                            "[default: $BENCH_CACHE or ~/.cache/bench]."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Compute every feature and stage afresh."),
    report_after: bool = typer.Option(True, "--report/--no-report", help="Print the report at the end."),
    infer_images: Optional[int] = typer.Option(None, help="Test images timed for the inference-speed columns; "
                                               "0 turns the measurement off [default: 1000 on cuda, 100 on cpu]."),
    infer_batch_size: int = typer.Option(100, help="Batch size of the inference-speed measurement."),
    precision: Optional[str] = typer.Option(None, help="fp32, tf32 or bf16 (autocast of the encoder passes) "
                                            "[default: bf16 on cuda, fp32 on cpu]."),
):
    """Run every trial (dataset x shots x seed x method stack) of a suite; finished trials are skipped."""
    _run_command(**locals())


def _run_command(suite, methods, datasets, shots, seeds, model, pretrained, data_root, run_name, results, device,
                 gpus_per_trial, cpus_per_trial, max_concurrent, address, set_, retry_failed, cache_dir, no_cache,
                 report_after, infer_images, infer_batch_size, precision, tuning: Optional[dict] = None):
    """`bench run`; with ``tuning`` (budget, search, oracle), `bench tune`: the fixed trials and a search per
    cell, then the chosen settings (bench.tune)."""
    from .plan import check_names, parse_sets
    from .results import RunFolder
    from .suite import load_suite

    spec_suite = load_suite(suite)
    sets = parse_sets(set_)
    check_names(spec_suite, methods=_split(methods), datasets=_split(datasets), sets=sets)
    run_name = run_name or _default_run_name(spec_suite, _split(datasets))
    if address is None and not RunFolder(results, run_name).exists():
        # A new run: its local Ray node starts while torch is imported and the trials are planned. A run
        # resumed may have nothing left to do; Ray starts there only once the plan says so.
        from .scheduler import start_local_ray

        start_local_ray()
    from .cache import default_cache_dir  # these import torch: after the start above
    from .plan import parse_int_list, plan_trials
    specs = plan_trials(
        spec_suite, run=run_name, results=results, methods=_split(methods), datasets=_split(datasets),
        shots=parse_int_list(shots, "shots") if shots else None,
        seeds=parse_int_list(seeds, "seeds") if seeds else None, model=model, pretrained=pretrained,
        data_root=data_root, device=device, sets=sets,
        cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
        infer_images=-1 if infer_images is None else infer_images, infer_batch_size=infer_batch_size,
        precision=precision)
    from .loading import check_shm

    check_shm(specs, cpus_per_trial or spec_suite.cpus_per_trial)
    if tuning is not None:
        from .tune import TunePlan

        tuning = TunePlan(specs, spec_suite, **tuning)
    folder = RunFolder(results, run_name)
    folder.ensure()
    with folder.lock():
        _run_locked(folder, specs, spec_suite, retry_failed=retry_failed, address=address,
                    cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, max_concurrent=max_concurrent,
                    tuning=tuning)
    specs = [*specs, *(tuning.finals if tuning is not None else [])]
    ids = {s.trial_id for s in specs}
    every = folder.read()
    rows = every[every.trial_id.isin(ids)]
    n_ok, n_failed = int((rows.status == "ok").sum()), int((rows.status != "ok").sum())
    if report_after and n_ok:
        _print_report(rows, None, Format.table, std=False, scores=_scores(folder), run=run_name)
    others = every[~every["trial_id"].isin(ids) & every["dataset"].isin({s.dataset for s in specs})
                   & every["stack"].isin({s.stack for s in specs})]
    if len(others):
        current = {s.dataset: s.dataset_fingerprint for s in specs}
        stale = int((others["dataset_fingerprint"].fillna("") != others["dataset"].map(current)).sum())
        err.print(f"left out of this table: {len(others)} earlier rows of run '{run_name}' for these datasets and "
                  f"stacks but other trials ({stale} made on another version of the data, {len(others) - stale} "
                  "with other settings, shots, seeds, weights or method versions); `bench report` shows them",
                  highlight=False, soft_wrap=True)
    short = rows.extras.fillna("").str.contains("classes_with_fewer_than_k")
    if short.any():
        err.print(f"warning: {int(short.sum())} trials had classes with fewer than K train images; "
                  "all their images were used (as Dassl does)")
    left = len(ids) - len(rows)
    err.print(f"{n_ok} of {len(ids)} trials ok, {n_failed} failed"
              + (f", {left} not run — run the same command again to continue" if left else "")
              + (f"; see `bench report --run {run_name} --errors`, then rerun with --retry-failed" if n_failed
                 else ""))
    if n_failed or left:
        raise typer.Exit(1)


def _default_run_name(suite, datasets: Optional[list[str]]) -> str:
    """The suite's name; with own data (a path in --datasets) the data's names instead, so that other data
    never lands in a suite's run and breaks its table."""
    from .data.catalog import canonical_entry, datasets as registered, get_dataset

    own = [get_dataset(canonical_entry(d)).name for d in datasets or [] if d not in registered()]
    if not own:
        return suite.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(dict.fromkeys(own)))  # the run's first line names it


def _run_locked(folder, specs, suite, *, retry_failed, address, cpus_per_trial, gpus_per_trial,
                max_concurrent, tuning=None) -> None:
    status = folder.statuses()  # trial id -> ok: one listing of the run
    todo = [s for s in specs if (status.get(s.trial_id) is False if retry_failed else not status.get(s.trial_id))]
    err.print(f"[bold]{folder.run}[/]: {len(specs)} trials, {len(specs) - len(todo)} already done or skipped, "
              f"running {len(todo)} -> {folder.location}")
    if not todo and tuning is None:
        return
    import functools

    from .scheduler import run_with_ray

    gpus = gpus_per_trial if gpus_per_trial is not None else (
        suite.gpus_per_trial or (1.0 if specs[0].device == "cuda" else 0.0))
    launch = functools.partial(run_with_ray, address=address, cpus_per_trial=cpus_per_trial or suite.cpus_per_trial,
                               gpus_per_trial=gpus, max_concurrent=max_concurrent, console=err)
    try:
        if tuning is not None:
            tuning.run(todo, launch)
        else:
            launch(todo)
    except KeyboardInterrupt:
        err.print("interrupted: finished trials are kept")


class SearchKind(str, Enum):
    random = "random"
    grid = "grid"
    asha = "asha"


def tune(**options):
    """Choose each stack's settings per cell by a search on the few-shot validation split (Ray Tune), then run
    them: every cell gets its fixed row and its val-tuned row; the search's trials go to <run>/search/."""
    budget, search, oracle = options.pop("budget"), options.pop("search"), options.pop("oracle")
    _run_command(**options, tuning={"budget": budget, "search": search.value, "oracle": oracle})


tune.__signature__ = inspect.signature(run).replace(parameters=[  # run's options (types resolved), then tune's
    *(p.replace(annotation=typing.get_type_hints(run)[p.name]) for p in inspect.signature(run).parameters.values()),
    inspect.Parameter("budget", inspect.Parameter.KEYWORD_ONLY, annotation=int, default=typer.Option(
        20, help="Search trials per cell, the configured settings included; the same for every stack.")),
    inspect.Parameter("search", inspect.Parameter.KEYWORD_ONLY, annotation=SearchKind, default=typer.Option(
        SearchKind.random, help="random, grid (at most --budget points), or asha (random, weak settings "
                                "stopped early on their epochs' validation accuracy).")),
    inspect.Parameter("oracle", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--oracle", help="Select on the TEST split, only to measure how much that inflates a method; "
                                "its rows say 'oracle' and are reported apart.")),
])
app.command()(tune)


def _print_report(rows, shots, fmt: Format, std: bool, compare: Optional[str] = None, scores=None,
                  run: str = "") -> None:
    for title, header, body, gain, footer, k, mean, metric in _report_tables(rows, shots, std, scores, run):
        _emit(title, header, body, gain, fmt)
        for line in footer:
            _note(line, fmt)
        if compare:
            _print_comparison(rows, mean, k, fmt, metric)


def _scores(folder):
    from .intervals import PredictionScores

    return PredictionScores(folder.read_predictions, folder.prediction_batches)


def _note(line: str, fmt: Format) -> None:
    """A line of prose beside a table: with it on the terminal and in markdown, on stderr beside the data
    formats (csv, latex)."""
    (out if fmt in (Format.table, Format.markdown) else err).print(line, markup=False, highlight=False,
                                                                   soft_wrap=True)


def _report_tables(rows, shots, std: bool, scores=None, run: str = ""):
    """(title, header, body, gain rows, footer lines, shots, mean table, metric) per metric and shot count;
    gain rows carry paired-bootstrap intervals where the trials kept their predictions (``scores``)."""
    from .intervals import gain_intervals
    from .report import gain_rows, metrics_of, protocol_tables, selection_groups, table_footer, table_rows, text_rows

    every = rows
    rows, note = table_rows(rows)
    if note:
        err.print(f"note: {note}", highlight=False, soft_wrap=True)
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


# datasets per block of a compared table on the terminal: 1 + 3 x 4 columns fit 200 characters uncut
COMPARED_PER_BLOCK = 4


def _print_comparison(rows, mean, shots: int, fmt: Format, metric: str = "top1") -> None:
    """The run's table beside the published numbers of its protocol and metric, per backbone; under each, the
    published cells' caveats and why rows have no paper value. The terminal gets blocks of datasets, the
    other formats one complete table."""
    from .report import comparison_rows, paper_comparisons

    from .published import load_published

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
                _emit(title + part, [h.replace(" ", "\n", 1) for h in header], body, [], fmt)
        else:
            _emit(title, *comparison_rows(comparison, has_paper), [], fmt)
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


def _emit(title: str, header: list, body: list, gain: list, fmt: Format) -> None:
    from .report import render, rich_tables

    if fmt == Format.table:
        for table in rich_tables(title, header, body, gain, out):
            out.print(table)
    else:
        out.print(render(title, header, body, gain, fmt.value), end="", markup=False, highlight=False,
                  soft_wrap=True)


@app.command()
def report(
    run_name: Optional[str] = typer.Option(None, "--run", help="Run name (default: the only or latest run)."),
    results: str = typer.Option(DEFAULT_RESULTS, help="Results folder or pyarrow filesystem URI."),
    shots: Optional[int] = typer.Option(None, help="Only this shot count."),
    fmt: Format = typer.Option(Format.table, "--format", help="table, markdown, csv or latex."),
    std: bool = typer.Option(False, "--std", help="Show the standard deviation over seeds."),
    plot: Optional[Path] = typer.Option(None, help="Write the figures to this PNG file (accuracies) and beside it "
                                        "(<name>_gains.png, <name>_masks.png, <name>_speed.png)."),
    html_path: Optional[Path] = typer.Option(None, "--html", help="Write one self-contained HTML report here."),
    errors: bool = typer.Option(False, "--errors", help="List failed trials with their error."),
    compare: Optional[str] = typer.Option(None, help="'paper': put the published numbers beside the cells."),
):
    """Paper-style tables of a run: mean over seeds per stack and dataset, Average, gain rows."""
    from .report import errors_table, load_rows
    from .results import RunFolder, latest_run, list_runs

    which = ""
    if run_name is None:
        run_name = latest_run(results)
        if run_name is None:
            raise BenchError(f"no runs under {results}; run `bench run` first or pass --results")
        which = f" (latest of {len(list_runs(results))}; --run NAME)"
    if compare not in (None, "paper"):
        raise BenchError(f"--compare takes 'paper', got '{compare}'")
    rows = load_rows(results, run_name)
    _note(f"run '{run_name}'{which}", fmt)
    if errors:
        bad = errors_table(rows)
        table = Table(title=f"failed trials of {run_name}: {len(bad)}", title_justify="left")
        for col in ("trial_id", "dataset", "shots", "seed", "stack", "error"):
            table.add_column(col, overflow="fold")
        for r in bad:
            table.add_row(*r)
        out.print(table)
        return
    if not (rows.status == "ok").any():
        raise BenchError(f"run '{run_name}' has no successful trials; see `bench report --run {run_name} --errors`")
    folder = RunFolder(results, run_name)
    scores = _scores(folder)
    _print_report(rows, shots, fmt, std, compare, scores, run_name)
    if plot or html_path:
        _write_figures_and_html(rows, folder, scores, shots, std, plot, html_path)


def _write_figures_and_html(rows, folder, scores, shots, std: bool, plot: Optional[Path],
                            html_path: Optional[Path]) -> None:
    from .figures import report_figures, save_figures
    from .html_report import html_document, write_html
    from .report import errors_table

    from .report import selections, table_rows
    from .selection import ORACLE

    chosen, _ = table_rows(rows)
    chosen = chosen[selections(chosen) != ORACLE]  # test-selected rows are kept out of the figures
    chosen = chosen if shots is None else chosen[chosen.shots == shots]
    figures = report_figures(chosen, scores, folder.artifact_dir)
    for path in save_figures(figures, plot) if plot else []:
        err.print(f"wrote {path}")
    if html_path:
        tables = [t[:5] for t in _report_tables(rows, shots, std, scores, folder.run)]
        from .tune import search_table

        document = html_document(folder.run, tables, figures, rows, errors_table(rows),
                                 search=search_table(folder))
        err.print(f"wrote {write_html(html_path, document)}")


@app.command("list")
def list_(what: Kind = typer.Argument(..., help="methods, suites, datasets, models or protocols"),
          name: Optional[str] = typer.Argument(None, help="methods: one method's settings, one per line."),
          suite: Optional[str] = typer.Option(None, help="methods: also list the variants this suite defines.")):
    """What is installed, with one-line descriptions."""
    from rich.markup import escape

    if what == Kind.methods:
        from .registry import broken_plugins, get_method, methods

        if suite:
            from .suite import load_suite

            load_suite(suite)
        if name:
            _show_method(get_method(name))
            return
        table = Table("method", "parts it changes", "description", "hyper-parameters (defaults)", "trains",
                      "`bench tune` searches")
        for name, m in sorted(methods().items()):
            params = ", ".join(f"{f.name}={_default(f)}" for f in dataclasses.fields(m.Config))
            if m.variant_of:
                params = "as " + m.variant_of + ", but " + ", ".join(
                    f"{k}={_shown(v)}" for k, v in m.variant_settings.items())
            space = ", ".join(f"{k} {s}" for k, s in m.search_space().items())
            table.add_row(name, ", ".join(p.label for p in sorted(m.changes)) or "-", m.description, params or "-",
                          m.trains or "-", space or "- (fixed)")
        for name, why in broken_plugins().items():
            table.add_row(name, "-", f"[red]failed to load: {escape(str(why))}[/]", "-", "-", "-")
        table.caption = escape("a variant is a method under its own name with settings of its own; suite files "
                               "add theirs in a [variants] table (`bench list methods --suite FILE` shows them); "
                               "`bench list methods NAME` shows one method's settings")
    elif what == Kind.suites:
        from .suite import builtin_suites, load_suite

        table = Table("suite", "description", "datasets", "shots", "seeds", "methods")
        for name in sorted(builtin_suites()):
            s = load_suite(name)
            table.add_row(name, s.description, ", ".join(s.datasets), ",".join(map(str, s.shots)),
                          ",".join(map(str, s.seeds)), ", ".join(s.methods))
    elif what == Kind.datasets:
        from .data.catalog import broken_dataset_plugins, dataset_origin, datasets

        table = Table("dataset", "description", "files", "prompt", "source")
        for name, d in sorted(datasets().items()):
            prompt = d.template if len(d.templates) == 1 else f"{len(d.templates)} templates: {d.template} ..."
            table.add_row(name, d.title, d.where(), prompt, dataset_origin(name))
        for name, why in broken_dataset_plugins().items():
            table.add_row(name, f"[red]failed to load: {why}[/]", "-", "-", "-")
        table.caption = "any image folder or .csv/.jsonl list is a dataset too: pass its path (docs/datasets.md)"
    elif what == Kind.protocols:
        from .protocols import PROTOCOLS, protocols

        table = Table("protocol", "description", "report tables", "source")
        for name, p in protocols().items():
            table.add_row(name, p.description, ", ".join(c for c, _ in p.metrics), PROTOCOLS.origin(name))
        for name, why in PROTOCOLS.broken().items():
            table.add_row(name, f"[red]failed to load: {escape(why)}[/]", "-", "-")
        table.caption = "a suite file names its protocol (protocol = \"...\"); plugins add theirs (bench.protocols)"
    else:
        from .models import MODELS, models

        table = Table("model", "description", "default --pretrained")
        for m in models().values():
            table.add_row(m.name, m.description, m.default_pretrained)
        for name, why in MODELS.broken().items():
            table.add_row(name, f"[red]failed to load: {escape(why)}[/]", "-")
        table.caption = "any other open_clip model name works as well (open_clip.list_models())"
    out.print(table)


def _show_method(method) -> None:
    """One method: what it is, the parts it changes, and each setting with its default on a line of its own."""
    lines = [method.name + (f" (variant of {method.variant_of})" if method.variant_of else ""), method.description,
             f"changes: {', '.join(p.label for p in sorted(method.changes)) or '-'}", f"trains: {method.trains or '-'}",
             "settings (--set " + method.name + ".KEY=VALUE), defaults:"]
    config = method.make_config("", 1)
    lines += [f"  {f.name} = {_shown(getattr(config, f.name))}" for f in dataclasses.fields(method.Config)]
    space = method.search_space()
    lines += ["`bench tune` searches:" if space else "`bench tune` searches nothing (the method is fixed)"]
    lines += [f"  {k} {s}" for k, s in space.items()]
    for line in lines:
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command("cache")
def cache_(prune: bool = typer.Option(False, "--prune", help="Delete the entries the options below select."),
           older_than: Optional[str] = typer.Option(None, help="Entries last used longer ago, e.g. 30d, 12h."),
           run_name: Optional[str] = typer.Option(None, "--run", help="Entries used by this run and no other."),
           cache_dir: Optional[str] = typer.Option(None, help="[default: $BENCH_CACHE or ~/.cache/bench]")):
    """What the feature and stage cache holds, by kind and size; with --prune, delete some of it (never an
    entry a running trial holds)."""
    from .cache import default_cache_dir, entries, parse_age, prune as prune_entries

    root = cache_dir or default_cache_dir()
    if prune:
        if older_than is None and run_name is None:
            raise BenchError("bench cache --prune needs --older-than AGE (e.g. 30d) or --run NAME")
        deleted, freed, busy = prune_entries(root, parse_age(older_than) if older_than else None, run_name)
        out.print(f"deleted {deleted} entries ({freed / 2**20:.1f} MB) from {root}"
                  + (f"; kept {busy} in use" if busy else ""))
        return
    table = Table("kind", "entries", "MB", title=f"cache {root}")
    kinds: dict[str, list[int]] = {}
    for kind, _, size, _ in entries(root):
        kinds.setdefault(kind, []).append(size)
    for kind, sizes in sorted(kinds.items()):
        table.add_row(kind, str(len(sizes)), f"{sum(sizes) / 2**20:.1f}")
    out.print(table)


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else (str(value) if value != "" else '""')


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return "?"


def _mount_data_commands() -> None:
    try:
        from .data_cli import data_app
    except ImportError:
        return
    app.add_typer(data_app, name="data")


_mount_data_commands()


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI; user mistakes print one line and return 2, never a traceback."""
    try:
        result = app(args=argv, prog_name="bench", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except BenchError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.exceptions.TyperException as e:  # usage errors: click's own one-line message
        e.show()
        return getattr(e, "exit_code", 2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        return 130


def entry() -> None:
    code = main()
    if "bench.scheduler" in sys.modules:  # after `run`: Ray and torch are loaded
        exit_now(code)
    sys.exit(code)


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown, which with torch and Ray loaded takes seconds
    and does nothing for the results: every row is written and closed by now, and Ray is stopped first."""
    import logging

    from .scheduler import stop_ray

    stop_ray()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # e.g. a pipe its reader closed
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
