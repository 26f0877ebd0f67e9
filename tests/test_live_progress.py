"""`bench run` shows the running trials (dataset, shots, seed, stack, node, latest message) under its bar,
and keeps each trial's messages in artifacts/<trial_id>/log.txt."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from bench.errors import BenchError
from bench.runner.live_view import RunProgress
from bench.results import RunFolder
from bench.runner.ray_tune import ThrottledProgress, _progress_every_s
from bench.spec import TrialSpec

ROOT = Path(__file__).resolve().parents[1]


def test_a_real_run_shows_running_trials_with_their_progress_and_logs_it(tmp_path):
    cmd = [sys.executable, "-m", "bench.cli", "run", "--run", "live", "--datasets", "syn_colour,syn_texture",
           "--methods", "mask", "--shots", "2", "--set", "mask.steps=10", "--pretrained", "none", "--no-report",
           "--cpus-per-trial", "1", "--cache-dir", str(tmp_path / "cache"), "--results", str(tmp_path)]
    env = {**os.environ, "TTY_COMPATIBLE": "1", "NO_COLOR": "1", "COLUMNS": "220",  # a terminal, redrawn
           "BENCH_PROGRESS_EVERY_S": "0"}  # every message reaches the view, however fast the machine
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = RunFolder(tmp_path, "live").read()
    assert len(rows) == 2 and set(rows.status) == {"ok"}
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", proc.stderr)  # cursor moves between redraws
    for row in rows.itertuples():
        shown = [line for line in screen.splitlines() if line.startswith(row.trial_id[:8])]
        running = [line.split() for line in shown if "mask epoch" in line]
        assert running, f"no live line for {row.dataset}:\n{screen[-3000:]}"
        assert running[0][1:6] == [row.dataset, "2", str(row.seed), "mask", row.node_ip]
        log = (tmp_path / "live" / "artifacts" / row.trial_id / "log.txt").read_text().splitlines()
        assert row.trial_id in log[0] and log[-1].endswith(f"ok: top1 {row.top1}")
        logged = [line.split(" ", 1)[1] for line in log if "mask epoch" in line]
        assert {" ".join(r[7:]) for r in running} == set(logged)
    # progress results are not finished trials: the bar never counts past the two trials
    assert re.search(r"\b2/2\b", screen) and not re.search(r"\b([3-9]|\d{2,})/2\b", screen)


def _spec(dataset: str) -> TrialSpec:
    return TrialSpec(run="r", suite="s", dataset=dataset, shots=4, seed=2, stack="mask", model="ViT-B/16",
                     pretrained="none", device="cpu", results="/tmp/unused")


def test_without_a_terminal_it_prints_plain_lines_sparingly():
    buffer, now = io.StringIO(), [0.0]
    view = RunProgress(Console(file=buffer, force_terminal=False, width=200), plain_every_s=30,
                       clock=lambda: now[0])
    spec = _spec("syn_colour")
    view.trial_started("abcdef0123456789", spec)
    for t, message in [(0, "started"), (5, "mask epoch 1/9"), (31, "mask epoch 2/9"), (40, "mask epoch 3/9")]:
        now[0] = t
        view.trial_progress("abcdef0123456789", spec, message, {"node_ip": "10.0.0.7", "node_id": "f" * 56})
    lines = buffer.getvalue().splitlines()
    assert lines == ["trial abcdef01 syn_colour 4-shot seed 2 mask on 10.0.0.7: started",
                     "trial abcdef01 syn_colour 4-shot seed 2 mask on 10.0.0.7: mask epoch 2/9"]
    assert len(list(view.get_renderables())) == 1  # no table redrawn into a log
    view.trial_ended("abcdef0123456789")
    assert not view.running


def test_the_table_lists_running_trials_and_counts_the_rest():
    buffer = io.StringIO()
    view = RunProgress(Console(file=buffer, force_terminal=True, width=200, color_system=None), max_rows=2)
    for i, dataset in enumerate(["syn_colour", "syn_texture", "syn_novel"]):
        view.trial_started(f"{i:016x}", _spec(dataset))
    view.trial_progress(f"{0:016x}", _spec("syn_colour"), "mask epoch 3/9 loss 1.2", {"node_id": "ab12cd34ef"})
    view.console.print(*view.get_renderables())
    text = buffer.getvalue()
    assert re.search(r"syn_colour\s+4\s+2\s+mask\s+ab12cd34\s+0:00\s+mask epoch 3/9 loss 1.2", text)
    assert "syn_texture" in text and "syn_novel" not in text and "and 1 more running" in text
    assert buffer.getvalue().count("waiting for a worker") == 1


def test_progress_is_sent_at_most_once_per_interval():
    sent, now = [], [0.0]
    progress = ThrottledProgress(sent.append, every_s=1.0, clock=lambda: now[0])
    for t, message in [(0, "a"), (0.5, "b"), (1.0, "c"), (1.2, "d"), (3, "e")]:
        now[0] = t
        progress(message)
    assert sent == ["a", "c", "e"]


def test_a_bad_progress_interval_is_a_user_error(monkeypatch):
    monkeypatch.setenv("BENCH_PROGRESS_EVERY_S", "0.5")
    assert _progress_every_s() == 0.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("BENCH_PROGRESS_EVERY_S", bad)
        with pytest.raises(BenchError, match="BENCH_PROGRESS_EVERY_S"):
            _progress_every_s()


def test_each_finished_trial_gets_a_line_in_a_log_and_each_failure_one_everywhere():
    plain, screen = io.StringIO(), io.StringIO()
    piped = RunProgress(Console(file=plain, force_terminal=False, width=200))
    live = RunProgress(Console(file=screen, force_terminal=True, width=200, color_system=None))
    for view in (piped, live):
        view.trial_finished("abcdef0123456789", _spec("syn_colour"), top1=81.25)
        view.trial_finished("0123456789abcdef", _spec("syn_novel"),
                            error="RuntimeError: optimizer got an empty parameter list\n  more detail")
    failed = "trial 01234567 syn_novel 4-shot seed 2 mask failed: RuntimeError: optimizer got an empty parameter list"
    assert plain.getvalue().splitlines() == ["trial abcdef01 syn_colour 4-shot seed 2 mask: top-1 81.25", failed]
    assert screen.getvalue().splitlines() == [failed]  # the live view shows its trials itself


def test_the_eta_holds_between_trials_that_end_minutes_apart():
    now = [0.0]
    view = RunProgress(Console(file=io.StringIO(), force_terminal=False), clock=lambda: now[0])
    task = view.add_task("run", total=10, failed=0)
    eta = next(c for c in view.columns if type(c).__name__ == "RunEtaColumn")
    shown = []
    for minute in range(1, 7):  # a trial ends every 2 minutes; the ETA is read in between too
        now[0] = minute * 60.0
        if minute % 2 == 0:
            view.update(task, advance=1)
        shown.append(str(eta.render(view.tasks[0])))
    assert shown == ["-:--:--", "18:00", "17:00", "16:00", "15:00", "14:00"]  # counts down at 2 min a trial
