"""Regenerate README.md's "What the default run prints" table (and the figures in docs/) from a cold-cache
run of the default suite.

Runs `bench run` (the synthetic suite, exactly as a new user does) with an empty cache and results
folder, then writes the markdown report between the README's ``default-table`` markers, with the wall
time and the mask sparsity range. Nothing in that block is typed by hand.

    python scripts/readme_table.py            # about 4 minutes on 2 CPU cores
"""
from __future__ import annotations

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


def bench(*args: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        sys.exit(f"bench {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BENCH_CACHE": f"{tmp}/cache"}
        results = f"{tmp}/results"
        start = time.perf_counter()
        bench("run", "--results", results, "--no-report", env=env)
        wall = time.perf_counter() - start
        table = bench("report", "--results", results, "--run", "synthetic", "--format", "markdown",
                      "--plot", str(ROOT / "docs" / "synthetic.png"), env=env)  # also docs/synthetic_gains.png
        rows = pd.read_parquet(f"{results}/synthetic/trials")
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
        f"{sparsity.max():.1f}%.",
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
