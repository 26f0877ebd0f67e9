"""What `bench run` does around its trials: a new run starts its local Ray node before it imports torch, it
plans without open_clip for the bundled model (the workers import it), and it ends its process without the
interpreter's teardown, where nothing of Ray may outlive it and every row must be on disk, also when a mistake
ends the run while the local Ray node is still starting."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def bench(args: list[str], ray_tmp: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONWARNINGS": "ignore"})


def processes_of(ray_tmp: str) -> list[str]:
    """Command lines of live processes that belong to the Ray node kept under ``ray_tmp``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if ray_tmp in cmdline and "zombie" not in state:
            found.append(cmdline[:120])
    return found


def no_processes_left(ray_tmp: str, within_s: float = 10.0) -> list[str]:
    deadline = time.monotonic() + within_s
    while (left := processes_of(ray_tmp)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_a_mistake_and_a_finished_run_leave_no_ray_process_behind_and_a_done_run_starts_none(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="br", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        # a mistake planning finds (two methods changing one part), after the node's start was asked for
        mistake = bench(["run", "--methods", "coop+linear_probe", "--results", str(tmp_path)], ray_tmp)
        assert mistake.returncode == 2, mistake.stderr[-2000:]
        assert "Traceback" not in mistake.stderr and "error:" in mistake.stderr
        assert not no_processes_left(ray_tmp)

        done = bench(["run", "--methods", "zeroshot", "--datasets", "syn_colour", "--seeds", "1", "--no-cache",
                      "--infer-images", "0", "--results", str(tmp_path), "--run", "exit"], ray_tmp)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "1 of 1 trials ok" in done.stderr
        rows = pd.read_parquet(tmp_path / "exit" / "trials")
        assert list(rows.status) == ["ok"] and rows.top1.notna().all()
        assert not no_processes_left(ray_tmp)

        sessions = sorted(Path(ray_tmp).glob("ray/session_2*"))
        assert len(sessions) == 2  # the mistake's start and the run's
        again = bench(["run", "--methods", "zeroshot", "--datasets", "syn_colour", "--seeds", "1", "--no-cache",
                       "--infer-images", "0", "--results", str(tmp_path), "--run", "exit"], ray_tmp)
        assert again.returncode == 0 and "1 already done" in again.stderr, again.stderr[-2000:]
        assert sorted(Path(ray_tmp).glob("ray/session_2*")) == sessions  # nothing left to do: no Ray node started
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_the_driver_plans_the_bundled_model_without_importing_open_clip(tmp_path):
    code = ("import sys; from bench.suite import load_suite; from bench.plan import plan_trials; "
            f"specs = plan_trials(load_suite('synthetic'), run='p', results={str(tmp_path)!r}, "
            "datasets=['syn_colour'], seeds=[1]); "
            "assert specs and 'open_clip' not in sys.modules, sorted(m for m in sys.modules if 'clip' in m)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_new_run_starts_its_ray_node_before_it_imports_torch(tmp_path):
    """The node's start (~3 s, mostly waiting on its processes) overlaps the driver's torch import and planning;
    the bad stack (two methods changing one part) ends the run in planning, after the start was asked for;
    a misspelt name ends it before (tests/test_cli.py)."""
    code = ("import sys, bench.runner.ray_tune as s; seen = []; "
            "s.start_local_ray = lambda: seen.append('torch' in sys.modules); "
            "from bench.cli import main; "
            f"code = main(['run', '--methods', 'coop+linear_probe', '--results', {str(tmp_path)!r}]); "
            "assert code == 2 and seen == [False], (code, seen)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
