"""Report, HTML and resume at the scale of a study: a run of many trials, against reading it as two files.

Writes a fake run in the synthetic suite's shape — its 11 stacks x 8 datasets at 16 shots, over as many
seeds as ``--trials`` needs (20,000 trials: 228 seeds), each trial a row and a 400-image prediction file,
1 % of them failed — through ``RunFolder`` as trials do, then reads it once as the end of `bench run` does.
Then, each in a fresh process (imports not timed), it times:

* **the floor**: the same rows and predictions as two single Parquet files (rows; predictions with a
  ``trial_id`` column), read with pyarrow (rows into pandas);
* ``bench report`` (the terminal tables with paired-bootstrap intervals), and ``bench report --html``;
* the resume check of ``bench run`` (``done_ids`` and ``failed_ids``), against one listing of the run's
  ``trials/`` folder.

Each step runs ``--repeat`` times, the steps alternated so that load from elsewhere hits all alike; the
medians are compared. Prints peak memory (max RSS) of each process, then ``report_scale: <report / floor>x the floor`` and
``resume_scale: <resume / listing>x the listing``. Targets at 20,000 trials: report <= 3x, resume <= 10x,
report peak memory < 1 GB.

Run from the repository root: ``python benchmarks/report_scale.py [--trials 20000] [--workdir DIR]``.
Writing 20,000 trials takes a few minutes on 2 cores; ``--workdir`` keeps (and reuses) the run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUN = "scale"
DATASETS = ["syn_colour", "syn_texture", "syn_colourtexture", "syn_noisycolour", "syn_noisytexture",
            "syn_warmlight", "syn_novel", "syn_noveltexture"]
STACKS = ["zeroshot", "linear_probe", "mask", "coop", "coop+mask", "clip_adapter", "clip_adapter+mask",
          "tip_adapter", "tip_adapter+mask", "tip_adapter_f", "tip_adapter_f+mask"]
N_IMAGES, N_CLASSES, SHOTS = 400, 8, 16
FAILED_EVERY = 100


def write_run(results: Path, trials: int, log=print) -> float:
    """Rows and predictions of ``trials`` fake trials under ``results/RUN``; the seconds it took."""
    import datetime as dt

    import pyarrow as pa

    from bench.results import RunFolder

    folder = RunFolder(results, RUN)
    folder.ensure()
    labels = (np.arange(N_IMAGES) % N_CLASSES).astype(np.int32)
    seeds = math.ceil(trials / (len(DATASETS) * len(STACKS)))
    start, n = time.perf_counter(), 0
    now = dt.datetime.now(dt.timezone.utc)
    for seed in range(1, seeds + 1):
        for d, dataset in enumerate(DATASETS):
            difficulty = np.random.default_rng([d, seed]).random(N_IMAGES)
            for s, stack in enumerate(STACKS):
                if n == trials:
                    return time.perf_counter() - start
                trial_id = hashlib.sha256(f"{stack} {dataset} {seed}".encode()).hexdigest()[:32]
                row = {"trial_id": trial_id, "run": RUN, "suite": "synthetic", "protocol": "fewshot",
                       "dataset": dataset, "shots": SHOTS, "seed": seed, "stack": stack, "model": "tiny",
                       "pretrained": "bundled", "data_fingerprint": f"data-{dataset}",
                       "dataset_fingerprint": f"ds-{dataset}", "weights_fingerprint": "w",
                       "hparams": "{}", "settings": "{}", "variants": "{}", "extras": "{}", "bench": "0.1.0",
                       "torch": "2.14.1", "open_clip": "3.3", "device": "cpu", "started_at": now,
                       "finished_at": now}
                n += 1
                if n % FAILED_EVERY == 0:
                    folder.write_row({**row, "status": "error", "error": "RuntimeError: fake failure"})
                    continue
                correct = difficulty < 0.4 + 0.04 * s
                predicted = np.where(correct, labels, (labels + 1) % N_CLASSES).astype(np.int32)
                folder.write_predictions(trial_id, pa.table({
                    "eval_set": pa.array(["test"] * N_IMAGES), "index": pa.array(np.arange(N_IMAGES, dtype=np.int32)),
                    "label": pa.array(labels), "predicted": pa.array(predicted)}))
                folder.write_row({**row, "status": "ok", "top1": 100.0 * correct.mean(), "n_test": N_IMAGES,
                                  "fit_seconds": 1.0, "eval_seconds": 0.1})
                if n % 2000 == 0:
                    log(f"  wrote {n} trials ({time.perf_counter() - start:.0f} s)")
    return time.perf_counter() - start


def write_floor(results: Path, floor: Path) -> None:
    """The run's rows and predictions as two single Parquet files (what the floor reads)."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    run = results / RUN
    floor.mkdir(parents=True, exist_ok=True)
    pq.write_table(pads.dataset(run / "trials", format="parquet").to_table(), floor / "rows.parquet")
    with pq.ParquetWriter(floor / "predictions.parquet", pa.schema([
            ("trial_id", pa.string()), ("eval_set", pa.string()), ("index", pa.int32()), ("label", pa.int32()),
            ("predicted", pa.int32())])) as writer:
        files = sorted((run / "predictions").glob("*.parquet"))
        for start in range(0, len(files), 1000):
            parts = []
            for path in files[start:start + 1000]:
                table = pq.read_table(path)
                parts.append(table.add_column(0, "trial_id", pa.array([path.stem] * len(table))))
            writer.write_table(pa.concat_tables(parts))


# Each measured step runs in a fresh process: its imports are not timed, its peak memory is its own.
CHILD = r"""
import json, resource, sys, time
step, results, floor = sys.argv[1:4]
import pyarrow.parquet as pq, pyarrow.fs as pafs
from bench.cli import main
from bench.results import RunFolder
import bench.report.tables, bench.report.intervals, bench.report.html, bench.report.figures, bench.suite, bench.protocols  # not timed
from bench.results import schema
schema()  # the method plugins: loaded by then in `bench run` and `bench report` alike
def floor_read():
    rows = pq.read_table(f"{floor}/rows.parquet").to_pandas()
    predictions = pq.read_table(f"{floor}/predictions.parquet")
    return len(rows), predictions.num_rows
def listing():
    folder = RunFolder(results, "scale")
    return len(folder.fs.get_file_info(pafs.FileSelector(folder.trials)))
def resume():  # what `bench run` asks before it plans what to run
    folder = RunFolder(results, "scale")
    if hasattr(folder, "statuses"):
        status = folder.statuses()
        return sum(status.values()), len(status) - sum(status.values())
    return len(folder.done_ids()), len(folder.failed_ids())
def report():
    assert main(["report", "--results", results, "--run", "scale"]) == 0
def report_html():
    assert main(["report", "--results", results, "--run", "scale", "--html", f"{floor}/report.html"]) == 0
start = time.perf_counter()
got = {"floor": floor_read, "listing": listing, "resume": resume, "report": report, "html": report_html}[step]()
seconds = time.perf_counter() - start
print("RESULT " + json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                              "got": repr(got)}))
"""


def measure(step: str, results: Path, floor: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, step, str(results), str(floor)], capture_output=True,
                          text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{step} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run here (reused when it is there)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every step, alternated; medians are shown")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="report-scale-"))
    results, floor = workdir / "results", workdir / "floor"
    if not (results / RUN / "trials").is_dir():
        print(f"writing {args.trials} fake trials under {results} ...", flush=True)
        seconds = write_run(results, args.trials)
        print(f"wrote {args.trials} trials in {seconds:.0f} s", flush=True)
    if not (floor / "predictions.parquet").is_file():
        from bench.results import RunFolder

        start = time.perf_counter()
        RunFolder(results, RUN).read()  # what the end of `bench run` does
        print(f"first read of the run (end of `bench run`): {time.perf_counter() - start:.1f} s", flush=True)
        write_floor(results, floor)
    if not args.repeat:
        return {}
    rounds: dict[str, list[dict]] = {}
    for _ in range(args.repeat):
        for step in ("floor", "listing", "resume", "report", "html"):
            got = measure(step, results, floor)
            rounds.setdefault(step, []).append(got)
            print(f"{step:8s} {got['seconds']:8.2f} s   peak {got['peak_mb']:7.0f} MB   {got['got']}", flush=True)
    figures = {step: {"seconds": statistics.median(g["seconds"] for g in got),
                      "peak_mb": max(g["peak_mb"] for g in got)} for step, got in rounds.items()}
    print("medians: " + ", ".join(f"{step} {f['seconds']:.2f} s" for step, f in figures.items()))
    out = {"report_scale": figures["report"]["seconds"] / figures["floor"]["seconds"],
           "html_scale": figures["html"]["seconds"] / figures["floor"]["seconds"],
           "resume_scale": figures["resume"]["seconds"] / figures["listing"]["seconds"],
           "report_peak_mb": figures["report"]["peak_mb"], "html_peak_mb": figures["html"]["peak_mb"],
           "figures": figures}
    print(f"trials: {args.trials}")
    print(f"report peak memory: {out['report_peak_mb']:.0f} MB (html: {out['html_peak_mb']:.0f} MB; a process with "
          f"the same imports that only lists the run: {figures['listing']['peak_mb']:.0f} MB)")
    print(f"html_scale: {out['html_scale']:.2f}x the floor")
    print(f"resume_scale: {out['resume_scale']:.2f}x the listing")
    print(f"report_scale: {out['report_scale']:.2f}x the floor")
    return out


if __name__ == "__main__":
    main()
