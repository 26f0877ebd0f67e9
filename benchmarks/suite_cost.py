"""Wall time of the synthetic suite's comparison with the feature cache and stage reuse vs with neither.

The stacks are the paper's comparison: every baseline with and without ``+mask`` (the suite file's
``methods`` plus whichever of ``PAPER_STACKS`` it lacks). Both variants run through the real
``bench run`` command (a subprocess each, so Ray scheduling is included), into separate temporary
``--results`` folders under the same run name:

* ``cached``:   ``--cache-dir <fresh temporary folder>`` — encoder features shared between trials, and
  stages reused (the masks learned by ``mask`` serve ``coop+mask``, ``clip_adapter+mask``, ...);
* ``uncached``: ``--no-cache`` — every trial computes its features and trains every stage itself.

Each variant is ONE ``bench run`` over every dataset, as a user runs the suite (the cached one first, on a
cold cache). The accuracies must be IDENTICAL: the script asserts the same ``top1`` per trial id. It prints
the ratio of whole-run wall times and of summed trial times.

Training uses the suite file's own CPU-fast settings (its ``[set.*]`` tables); ``--epochs-fraction 0.1``
instead sets every iterative method's epochs to a tenth of the plugin's default.
Run from the repository root (about 10-15 minutes on 2 cores with the defaults, the whole suite):
``python benchmarks/suite_cost.py [--datasets syn_colour,syn_texture] [--shots 16] [--seeds 1]``.
Last line: ``suite_cost speedup: <uncached wall / cached wall>x``.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAPER_STACKS = ["zeroshot", "linear_probe", "mask", "coop", "coop+mask", "clip_adapter", "clip_adapter+mask",
                "tip_adapter", "tip_adapter+mask", "tip_adapter_f", "tip_adapter_f+mask"]
# iterative methods' epoch settings (the plugins' defaults) scaled by --epochs-fraction
EPOCHS = {"mask.epochs": 30, "coop.epochs": 200, "clip_adapter.epochs": 200, "tip_adapter_f.epochs": 20}
RUN = "suite_cost"


def suite_stacks(suite: str = "synthetic") -> list[str]:
    """The suite file's stacks, then any stack of the paper's comparison it lacks."""
    from bench.suite import load_suite

    stacks = list(load_suite(suite).methods)
    return stacks + [s for s in PAPER_STACKS if s not in stacks]


def short_sets(fraction: float) -> list[str]:
    if fraction >= 1:
        return []
    return [f"{k}={max(1, math.ceil(v * fraction))}" for k, v in EPOCHS.items()]


def bench_run(run: dict, log=print) -> float:
    """Run ``bench run`` with the options of ``run`` (see :func:`measure`) in a subprocess; return its wall time
    (raise with its output on failure)."""
    cmd = [sys.executable, "-m", "bench.cli", "run", "--suite", run["suite"], "--run", RUN, "--no-report",
           "--methods", ",".join(run["methods"]), "--datasets", ",".join(run["datasets"]),
           "--shots", ",".join(map(str, run["shots"])), "--seeds", ",".join(map(str, run["seeds"])),
           "--results", run["results"], *[a for s in run["sets"] for a in ("--set", s)],
           *(["--cache-dir", run["cache_dir"]] if run["cache_dir"] else ["--no-cache"])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def run_serial(run: dict, log=print) -> float:
    """The same trials, run by the serial executor in this process (no Ray).

    For tests: it exercises planning, the cache, stage reuse and the row comparison in seconds, but not
    Ray's scheduling, so its wall times are not the benchmark's.
    """
    import torch

    from bench.plan import parse_sets, plan_trials
    from bench.results import RunFolder
    from bench.runner import run_trials
    from bench.runner.serial import SerialExecutor
    from bench.suite import load_suite

    t0 = time.perf_counter()
    specs = plan_trials(load_suite(run["suite"]), run=RUN, results=run["results"], methods=run["methods"],
                        datasets=run["datasets"], shots=run["shots"], seeds=run["seeds"], sets=parse_sets(run["sets"]),
                        cache_dir=run["cache_dir"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray trainable does with --cpus-per-trial 1
    try:
        run_trials(RunFolder(run["results"], RUN), specs, SerialExecutor())
    finally:
        torch.set_num_threads(threads)
    return time.perf_counter() - t0


def measure(datasets: list[str], stacks: list[str], shots: str = "16", seeds: str = "1", sets: list[str] = (),
            workdir: str | Path | None = None, suite: str = "synthetic", log=print, runner=bench_run) -> dict:
    """Run the suite both ways, one ``bench run`` each; return walls, rows and the per-trial comparison.

    ``runner`` runs one variant's trials (a dict of ``suite``, ``methods``, ``datasets``, ``shots``, ``seeds``,
    ``sets``, ``results`` and ``cache_dir``, None for no cache) and returns its wall time: ``bench_run`` (the
    real command, the benchmark) or ``run_serial`` (the serial executor, no Ray; for the tests).

    Returns ``{"wall": {"cached": s, "uncached": s}, "rows": {variant: DataFrame}, "results":
    {variant: folder}, "speedup": uncached / cached}``. Raises AssertionError if any trial's top1 differs.
    """
    import pandas as pd

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="suite_cost-")
        workdir = tmp.name
    work = Path(workdir)
    results = {"cached": work / "results-cached", "uncached": work / "results-uncached"}
    cache_dir = work / "cache"  # fresh: created by the first cached run
    common = {"suite": suite, "methods": list(stacks), "datasets": list(datasets),
              "shots": [int(k) for k in shots.split(",")], "seeds": [int(k) for k in seeds.split(",")],
              "sets": list(sets)}
    cache = {"cached": str(cache_dir), "uncached": None}
    wall = {"cached": 0.0, "uncached": 0.0}
    for variant in ("cached", "uncached"):
        wall[variant] = runner({**common, "results": str(results[variant]), "cache_dir": cache[variant]})
        log(f"  {variant:<9} {wall[variant]:7.1f} s", flush=True)
    rows = {v: pd.read_parquet(results[v] / RUN / "trials") for v in results}
    for v, r in rows.items():
        bad = r[r.status != "ok"]
        assert bad.empty, f"{v}: failed trials:\n{bad[['stack', 'dataset', 'error']].to_string()}"
    a = rows["cached"].set_index("trial_id")
    b = rows["uncached"].set_index("trial_id")
    assert set(a.index) == set(b.index), "the two variants ran different trials"
    differ = [(a.at[t, "stack"], a.at[t, "dataset"], a.at[t, "top1"], b.at[t, "top1"])
              for t in a.index if a.at[t, "top1"] != b.at[t, "top1"]]
    assert not differ, "top1 differs with the cache (stack, dataset, cached, uncached): " + repr(differ)
    trial_seconds = {v: float((r.finished_at - r.started_at).dt.total_seconds().sum()) for v, r in rows.items()}
    out = {"wall": wall, "rows": rows, "results": results, "speedup": wall["uncached"] / wall["cached"],
           "trial_speedup": trial_seconds["uncached"] / trial_seconds["cached"]}
    if tmp is not None:
        tmp.cleanup()
        out["results"] = None
    return out


def print_table(out: dict) -> None:
    import pandas as pd

    rows = out["rows"]
    per = {}
    for v, r in rows.items():
        r = r.assign(wall=(r.finished_at - r.started_at).dt.total_seconds(),
                     reused=r.extras.fillna("").str.contains("reused_stage"))
        per[v] = r.groupby("stack").agg(top1=("top1", "mean"), fit=("fit_seconds", "sum"),
                                        wall=("wall", "sum"), reused=("reused", "sum"))
    t = pd.concat(per, axis=1)
    print(f"{'stack':<20} {'top1':>7} {'fit s cached':>13} {'fit s uncached':>15} {'trial s cached':>15} "
          f"{'trial s uncached':>17} {'stages reused':>14}")
    for stack in [s for s in PAPER_STACKS if s in t.index] + [s for s in t.index if s not in PAPER_STACKS]:
        c, u = t.loc[stack, "cached"], t.loc[stack, "uncached"]
        print(f"{stack:<20} {c.top1:7.2f} {c.fit:13.1f} {u.fit:15.1f} {c.wall:15.1f} {u.wall:17.1f} "
              f"{int(c.reused):>14}")
    c, u = t["cached"].sum(), t["uncached"].sum()
    print(f"{'sum of trials':<20} {'':>7} {c.fit:13.1f} {u.fit:15.1f} {c.wall:15.1f} {u.wall:17.1f}")
    w = out["wall"]
    print(f"bench run wall (incl. Ray start-up and scheduling): cached {w['cached']:.1f} s, "
          f"uncached {w['uncached']:.1f} s; top1 identical for all {len(rows['cached'])} trials")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=None, help="comma list (default: all of the suite's datasets)")
    ap.add_argument("--shots", default="16")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--methods", default=None, help="comma list of stacks (default: the suite's + PAPER_STACKS)")
    ap.add_argument("--epochs-fraction", type=float, default=1.0,
                    help="below 1: set every iterative method's epochs to this fraction of the plugin default "
                         "(default 1: the suite file's own CPU-fast settings)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra METHOD.KEY=VALUE")
    ap.add_argument("--workdir", default=None, help="keep results and cache here (default: a temporary folder)")
    args = ap.parse_args(argv)
    stacks = args.methods.split(",") if args.methods else suite_stacks()
    sets = short_sets(args.epochs_fraction) + args.sets
    from bench.suite import load_suite

    datasets = args.datasets.split(",") if args.datasets else list(load_suite("synthetic").datasets)
    print(f"{len(datasets)} datasets x {len(args.shots.split(','))} shots x {len(args.seeds.split(','))} seeds x "
          f"{len(stacks)} stacks; settings: {' '.join(sets) or 'defaults'}", flush=True)
    workdir = args.workdir
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="suite_cost-")
        workdir = tmp.name
    out = measure(datasets, stacks, args.shots, args.seeds, sets, workdir)
    print_table(out)
    if tmp is not None:
        tmp.cleanup()
    print(f"summed trial time ratio: {out['trial_speedup']:.2f}x")
    print(f"suite_cost speedup: {out['speedup']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
