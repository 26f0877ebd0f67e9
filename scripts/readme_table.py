"""Regenerate README.md's "What the default run prints" table (and the figures in docs/) from a cold-cache
run of the default suite.

Runs `bench run` (the synthetic suite, exactly as a new user does) with an empty cache and results
folder, then writes the markdown report between the README's ``default-table`` markers, with the wall
time and the mask sparsity range. Nothing in that block is typed by hand.

    python scripts/readme_table.py            # about 4 minutes on 2 CPU cores
    python scripts/readme_table.py --check    # runs it again; lists cells beyond TOLERANCE, README untouched
    python scripts/readme_table.py --check --cpus-per-trial 2   # the same with 2 threads per trial

Float rounding differs between CPUs and thread counts; a few trained cells move with it. TOLERANCE is the
check's threshold: two test images of the synthetic datasets' 400.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- default-table:start -->", "<!-- default-table:end -->"
TOLERANCE = 0.5  # points of top-1: see the module docstring


def bench(*args: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        sys.exit(f"bench {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def run_default_suite(cpus_per_trial: int | None, plot: bool) -> tuple[str, pd.DataFrame, float]:
    """(markdown report, rows, wall seconds) of a cold-cache run of the default suite."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BENCH_CACHE": f"{tmp}/cache"}
        results = f"{tmp}/results"
        threads = ["--cpus-per-trial", str(cpus_per_trial)] if cpus_per_trial else []
        start = time.perf_counter()
        bench("run", "--results", results, "--no-report", *threads, env=env)
        wall = time.perf_counter() - start
        plots = ["--plot", str(ROOT / "docs" / "synthetic.png")] if plot else []  # also docs/synthetic_gains.png
        table = bench("report", "--results", results, "--run", "synthetic", "--format", "markdown", *plots, env=env)
        rows = pd.read_parquet(f"{results}/synthetic/trials")
    return table, rows, wall


def accuracy_cells(markdown: str) -> dict[tuple[str, str], float]:
    """(method, dataset) -> value of a markdown table's accuracy rows (gain rows left out)."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if " vs " not in cells[0]:
            out.update({(cells[0], column): float(v) for column, v in zip(header[1:], cells[1:]) if v != "-"})
    return out


def check(cpus_per_trial: int | None) -> int:
    table, _, _ = run_default_suite(cpus_per_trial, plot=False)
    block = re.search(re.escape(START) + "(.*?)" + re.escape(END), README.read_text(), re.S).group(1)
    printed, fresh = accuracy_cells(block), accuracy_cells(table)
    differ = {k: (printed.get(k), fresh.get(k)) for k in printed.keys() | fresh.keys()
              if k not in printed or k not in fresh or abs(printed[k] - fresh[k]) > TOLERANCE}
    moved = {k: fresh[k] - printed[k] for k in printed.keys() & fresh.keys() if fresh[k] != printed[k]}
    largest = max((abs(d) for d in moved.values()), default=0.0)
    for (method, dataset), delta in sorted(moved.items()):  # every cell that moved, within tolerance or not
        mark = "  beyond tolerance" if (method, dataset) in differ else ""
        print(f"moved: {method} on {dataset}: README {printed[(method, dataset)]:.2f}, this run "
              f"{fresh[(method, dataset)]:.2f} ({delta:+.2f}){mark}")
    for (method, dataset), (was, now) in sorted(differ.items()):
        if (method, dataset) not in moved:
            print(f"{method} on {dataset}: README {was}, this run {now}")
    print(f"{len(moved)} of {len(printed)} cells moved; {len(differ)} by more than {TOLERANCE} points "
          f"(largest difference {largest:.2f})")
    return 1 if differ else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare a fresh run with the README's table")
    parser.add_argument("--cpus-per-trial", type=int, default=None, help="threads per trial (default: the suite's)")
    args = parser.parse_args()
    if args.check:
        sys.exit(check(args.cpus_per_trial))
    table, rows, wall = run_default_suite(args.cpus_per_trial, plot=True)
    body = [line for line in table.splitlines() if line.startswith("|")]
    header, rule, *cells = body
    keep = [c for c in cells if " vs zeroshot " not in c]  # the X+mask gain rows; "vs zeroshot" is in --format
    sparsity = rows["mask_sparsity"].dropna()
    n_stacks, n_datasets = rows["stack"].nunique(), rows["dataset"].nunique()
    block = "\n".join([
        START,
        f"The `synthetic` suite ({n_datasets} generated datasets, 16 shots, seed 1, all {n_stacks} stacks; "
        f"{len(rows)} trials) ran in {int(wall // 60)} min {int(wall % 60)} s from a cold cache on a "
        f"{os.cpu_count()}-core CPU machine (`python scripts/readme_table.py`). Test top-1 (%); gain rows "
        "with their 95 % paired-bootstrap interval, `*` where it excludes 0:",
        "",
        header, rule, *keep,
        "",
        f"Mask sparsity (share of the masked weights switched off) ended between {sparsity.min():.2f}% and "
        f"{sparsity.max():.1f}%. Float rounding differs between CPUs and thread counts, and trained cells "
        "can move with it (by how much: below); `python scripts/readme_table.py --check` runs the suite again, "
        f"lists the cells that moved and fails on any that differ from this table by more than {TOLERANCE:g} points.",
        END,
    ])
    text = README.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        sys.exit(f"README.md has no {START} ... {END} block")
    README.write_text(pattern.sub(lambda _: block, text))
    print(f"README.md updated: {len(rows)} trials in {wall:.0f} s")


if __name__ == "__main__":
    main()
