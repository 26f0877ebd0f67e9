"""Scheduling overhead per trial of ``bench run`` on the synthetic suite: wall time not spent in fit/eval.

Runs cheap trials through the real command (a subprocess: ``bench run --methods zeroshot`` on every
synthetic dataset x 2 seeds, ``--cpus-per-trial 1``, ``--no-cache``, a temporary ``--results``), then reads
the Parquet rows (``started_at``, ``finished_at``, ``fit_seconds``, ``eval_seconds``) and reports:

* in-trial overhead, per trial: ``(finished_at - started_at) - fit_seconds - eval_seconds`` — data and
  model loading, text weights, writing the row;
* scheduling overhead of the driver: ``wall - sum(trial walls) / concurrency`` — Python and Ray start-up,
  Tune's trial launches and result handling, shutdown; split into start-up (launch -> first trial start),
  gaps between trials on a slot, and tail (last trial end -> process exit);
* per-trial scheduling overhead: the trials are put back on their ``concurrency`` slots (each starts on
  the slot freed earliest before it), and a trial's overhead is the idle gap before it on its slot plus
  its in-trial overhead. The median of that is the printed figure (target <= 2 s); the first trial of
  each slot carries the start-up, which the median leaves out and the start-up line shows.

Fixed cost per run: start-up plus tail (what a run pays besides its trials), over the bare
``import torch, open_clip, ray`` time measured in the same benchmark (once before and once after the run,
the mean taken) is printed as ``startup ratio: <ratio>`` (target <= 1.5).

Run from the repository root: ``python benchmarks/overhead.py [--seeds 1,2] [--datasets ...]`` (1-3 min).
Last line: ``overhead seconds: <median per-trial scheduling overhead>``.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = "overhead"


def run_bench(results: str | Path, datasets: list[str] | None = None, seeds: str = "1,2",
              methods: str = "zeroshot", cpus_per_trial: float = 1.0, extra: list[str] = ()) -> tuple[float, float]:
    """``bench run`` in a subprocess; returns (launch time as epoch seconds, exit time as epoch seconds)."""
    cmd = [sys.executable, "-m", "bench.cli", "run", "--methods", methods, "--seeds", seeds, "--run", RUN,
           "--results", str(results), "--cpus-per-trial", str(cpus_per_trial), "--no-cache", "--no-report",
           *(["--datasets", ",".join(datasets)] if datasets else []), *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    t1 = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return t0, t1


BARE_IMPORTS = "import torch, open_clip, ray"


def bare_import_seconds() -> float:
    """Wall time of a fresh interpreter importing what every ``bench run`` must import."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", BARE_IMPORTS], check=True, capture_output=True)
    return time.perf_counter() - t0


def analyse(rows, launched: float, exited: float, concurrency: int) -> dict:
    """Overhead figures from a run's rows (a DataFrame) and the driver's launch/exit times (epoch s)."""
    rows = rows[rows.status == "ok"].sort_values("started_at")
    start = rows.started_at.map(lambda t: t.timestamp()).tolist()
    end = rows.finished_at.map(lambda t: t.timestamp()).tolist()
    busy = (rows.fit_seconds + rows.eval_seconds).tolist()
    n = len(start)
    walls = [e - s for s, e in zip(start, end)]
    in_trial = [w - b for w, b in zip(walls, busy)]
    c = max(1, min(concurrency, n))
    slots = [launched] * c  # time each slot became free
    gaps = []
    for s, e in zip(start, end):
        k = min(range(c), key=lambda j: (slots[j] > s + 1e-3, slots[j]))  # the slot freed earliest before s
        gaps.append(max(0.0, s - slots[k]))
        slots[k] = e
    first = sorted(range(n), key=lambda i: start[i])[:c]  # the trials that carry the start-up
    per_trial = [g + o for g, o in zip(gaps, in_trial)]
    steady = [per_trial[i] for i in range(n) if i not in first] or per_trial
    wall = exited - launched
    return {
        "trials": n, "concurrency": c, "wall": wall, "sum_trial_wall": sum(walls), "sum_fit_eval": sum(busy),
        "in_trial": in_trial, "in_trial_median": statistics.median(in_trial),
        "scheduling": wall - sum(walls) / c, "scheduling_per_trial": (wall - sum(walls) / c) / n,
        "startup": min(start) - launched, "tail": exited - max(end),
        "gaps_median": statistics.median([gaps[i] for i in range(n) if i not in first] or [0.0]),
        "per_trial": per_trial, "per_trial_median": statistics.median(per_trial),
        "per_trial_median_steady": statistics.median(steady),
        "not_fit_eval_per_trial": (wall * c - sum(busy)) / n,
    }


def measure(datasets: list[str] | None = None, seeds: str = "1,2", cpus_per_trial: float = 1.0,
            workdir: str | Path | None = None, methods: str = "zeroshot") -> dict:
    """Run the cheap trials and return ``analyse``'s figures (plus ``rows``)."""
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        results = Path(workdir or tmp) / "results"
        before = bare_import_seconds()
        launched, exited = run_bench(results, datasets, seeds, methods, cpus_per_trial)
        bare = (before + bare_import_seconds()) / 2
        rows = pd.read_parquet(results / RUN / "trials")
    concurrency = int(math.floor((os.cpu_count() or 1) / cpus_per_trial + 1e-9))
    out = analyse(rows, launched, exited, concurrency)
    out["rows"] = rows
    add_startup_ratio(out, bare)
    return out


def add_startup_ratio(o: dict, bare: float) -> None:
    """The run's fixed cost (start-up + tail) and its ratio to the bare import time ``bare``."""
    o["bare_import"] = bare
    o["fixed"] = o["startup"] + o["tail"]
    o["startup_ratio"] = o["fixed"] / bare


def print_report(o: dict) -> None:
    if "bare_import" in o:
        print(f"bare `{BARE_IMPORTS}` {o['bare_import']:.1f} s; fixed cost of the run (start-up + tail) "
              f"{o['fixed']:.1f} s")
    q = lambda xs: f"median {statistics.median(xs):5.2f}  min {min(xs):5.2f}  max {max(xs):5.2f}"
    print(f"{o['trials']} trials, {o['concurrency']} at a time; bench run wall {o['wall']:.1f} s, "
          f"sum of trial walls {o['sum_trial_wall']:.1f} s, of which fit+eval {o['sum_fit_eval']:.1f} s")
    print(f"in-trial overhead per trial (wall - fit - eval; data + model loading)   {q(o['in_trial'])} s")
    print(f"scheduling overhead (wall - sum of trial walls / {o['concurrency']})                 "
          f"{o['scheduling']:6.1f} s  ({o['scheduling_per_trial']:.2f} s per trial)")
    print(f"  start-up: launch -> first trial start                               {o['startup']:6.1f} s")
    print(f"  gaps between trials on a slot (median, start-up excluded)           {o['gaps_median']:6.2f} s")
    print(f"  tail: last trial end -> process exit                                {o['tail']:6.1f} s")
    print(f"per-trial scheduling overhead (slot gap + in-trial overhead)          {q(o['per_trial'])} s")
    print(f"  median without the {o['concurrency']} first trials (which carry the start-up)          "
          f"{o['per_trial_median_steady']:6.2f} s")
    print(f"slot time not spent in fit/eval, per trial ((wall x {o['concurrency']} - fit - eval) / n)      "
          f"{o['not_fit_eval_per_trial']:6.2f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=None, help="comma list (default: all of the synthetic suite's)")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--methods", default="zeroshot")
    ap.add_argument("--cpus-per-trial", type=float, default=1.0)
    args = ap.parse_args(argv)
    o = measure(args.datasets.split(",") if args.datasets else None, args.seeds, args.cpus_per_trial,
                methods=args.methods)
    print_report(o)
    print(f"startup ratio: {o['startup_ratio']:.2f}")
    print(f"overhead seconds: {o['per_trial_median']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
