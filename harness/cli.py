"""The `bench` command: run, report, list (and data)."""
from __future__ import annotations

import inspect
import os
import sys
import typing
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from .console import err, out
from .data_cli import data_app
from .errors import BenchError
from .report.printing import Format

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark few-shot adaptation methods for CLIP models.")
app.add_typer(data_app, name="data")

DEFAULT_RESULTS = os.environ.get("BENCH_RESULTS", "results")


Kind = Enum("Kind", {k: k for k in ("methods", "suites", "datasets", "models", "protocols")}, type=str)


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
    from .plan import check_names, default_run_name, parse_sets
    from .results import RunFolder
    from .suite import load_suite

    spec_suite = load_suite(suite)
    sets = parse_sets(set_)
    check_names(spec_suite, methods=_split(methods), datasets=_split(datasets), sets=sets)
    folder = RunFolder(results, run_name or default_run_name(spec_suite, _split(datasets)))
    if address is None and not folder.exists():
        # A new run: its local Ray node starts while torch is imported and the trials are planned. A run
        # resumed may have nothing left to do; Ray starts there only once the plan says so.
        from .runner.ray_tune import start_local_ray

        start_local_ray()
    from .cache import default_cache_dir  # these import torch: after the start above
    from .loading import check_shm
    from .plan import parse_int_list, plan_trials
    from .report.printing import print_report, scores
    from .runner import run_trials, summarise
    from .runner.ray_tune import RayExecutor

    specs = plan_trials(
        spec_suite, run=folder.run, results=results, methods=_split(methods), datasets=_split(datasets),
        shots=parse_int_list(shots, "shots") if shots else None,
        seeds=parse_int_list(seeds, "seeds") if seeds else None, model=model, pretrained=pretrained,
        data_root=data_root, device=device, sets=sets,
        cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
        infer_images=-1 if infer_images is None else infer_images, infer_batch_size=infer_batch_size,
        precision=precision)
    check_shm(specs, cpus_per_trial or spec_suite.cpus_per_trial)
    if tuning is not None:
        from .tune import TunePlan

        tuning = TunePlan(specs, spec_suite, **tuning)
    gpus = gpus_per_trial if gpus_per_trial is not None else (
        spec_suite.gpus_per_trial or (1.0 if specs[0].device == "cuda" else 0.0))
    execute = RayExecutor(address=address, cpus_per_trial=cpus_per_trial or spec_suite.cpus_per_trial,
                          gpus_per_trial=gpus, max_concurrent=max_concurrent, console=err)
    run_trials(folder, specs, execute, retry_failed=retry_failed, tuning=tuning)
    summary = summarise(folder, [*specs, *(tuning.finals if tuning is not None else [])])
    if report_after and summary.ok:
        print_report(summary.rows, None, Format.table, std=False, scores=scores(folder), run=folder.run)
    for line in summary.lines:
        err.print(line, highlight=False, soft_wrap=True)
    if not summary.complete:
        raise typer.Exit(1)


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
    from .report.printing import note, print_errors, print_report, scores as prediction_scores, \
        write_figures_and_html
    from .report.tables import load_rows
    from .results import RunFolder, chosen_run

    run_name, which = chosen_run(results, run_name)
    if compare not in (None, "paper"):
        raise BenchError(f"--compare takes 'paper', got '{compare}'")
    rows = load_rows(results, run_name)
    note(f"run '{run_name}'{which}", fmt)
    if errors:
        print_errors(rows, run_name)
        return
    if not (rows.status == "ok").any():
        raise BenchError(f"run '{run_name}' has no successful trials; see `bench report --run {run_name} --errors`")
    folder = RunFolder(results, run_name)
    scores = prediction_scores(folder)
    print_report(rows, shots, fmt, std, compare, scores, run_name)
    if plot or html_path:
        write_figures_and_html(rows, folder, scores, shots, std, plot, html_path)


@app.command("list")
def list_(what: Kind = typer.Argument(..., help="methods, suites, datasets, models or protocols"),
          name: Optional[str] = typer.Argument(None, help="methods: one method's settings, one per line."),
          suite: Optional[str] = typer.Option(None, help="methods: also list the variants this suite defines.")):
    """What is installed, with one-line descriptions."""
    from . import listing

    if what == Kind.methods and name:
        listing.show_method(name)
        return
    out.print({Kind.methods: lambda: listing.methods_table(suite), Kind.suites: listing.suites_table,
               Kind.datasets: listing.datasets_table, Kind.protocols: listing.protocols_table,
               Kind.models: listing.models_table}[what]())


@app.command("cache")
def cache_(prune: bool = typer.Option(False, "--prune", help="Delete the entries the options below select."),
           older_than: Optional[str] = typer.Option(None, help="Entries last used longer ago, e.g. 30d, 12h."),
           run_name: Optional[str] = typer.Option(None, "--run", help="Entries used by this run and no other."),
           cache_dir: Optional[str] = typer.Option(None, help="[default: $BENCH_CACHE or ~/.cache/bench]")):
    """What the feature and stage cache holds, by kind and size; with --prune, delete some of it (never an
    entry a running trial holds)."""
    from .cache import default_cache_dir, parse_age, prune as prune_entries
    from .listing import cache_table

    root = cache_dir or default_cache_dir()
    if prune:
        if older_than is None and run_name is None:
            raise BenchError("bench cache --prune needs --older-than AGE (e.g. 30d) or --run NAME")
        deleted, freed, busy = prune_entries(root, parse_age(older_than) if older_than else None, run_name)
        out.print(f"deleted {deleted} entries ({freed / 2**20:.1f} MB) from {root}"
                  + (f"; kept {busy} in use" if busy else ""))
        return
    out.print(cache_table(root))


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
    if "bench.runner.ray_tune" in sys.modules:  # after `run`: Ray and torch are loaded
        from .runner.ray_tune import exit_now

        exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
