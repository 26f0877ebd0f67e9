"""The scripts under benchmarks/ at their smallest size, so they keep working as the harness changes."""
from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_suite_cost_same_accuracy_with_and_without_cache(tmp_path):
    suite_cost = load("suite_cost")
    stacks = suite_cost.suite_stacks()
    assert set(suite_cost.PAPER_STACKS) <= set(stacks)
    assert "mask.epochs=3" in suite_cost.short_sets(0.1) and suite_cost.short_sets(1) == []
    # one dataset, two cheap stacks, one of them reusing the other's mask stage; no Ray (the serial executor)
    out = suite_cost.measure(["syn_colour"], ["mask", "tip_adapter+mask"], shots="2", seeds="1",
                             sets=["mask.steps=1", "mask.batch_size=8", "tip_adapter.augment_views=1"],
                             workdir=tmp_path, log=lambda *a, **k: None, runner=suite_cost.run_serial)
    cached, uncached = out["rows"]["cached"], out["rows"]["uncached"]
    assert len(cached) == len(uncached) == 2 and (cached.status == "ok").all()
    assert cached.extras.str.contains("reused_stage").sum() == 1  # tip_adapter+mask reused mask's masks
    assert not uncached.extras.str.contains("reused_stage").any()
    assert out["wall"]["cached"] > 0 and out["speedup"] > 0
    suite_cost.print_table(out)


def test_suite_cost_detects_different_accuracy(tmp_path, monkeypatch):
    suite_cost = load("suite_cost")
    calls = []

    def fake_runner(run, log=print):  # rows as bench would write them, with one accuracy that differs
        results = Path(run["results"]) / suite_cost.RUN / "trials"
        results.mkdir(parents=True, exist_ok=True)
        calls.append(run["cache_dir"] is None)
        now = dt.datetime.now(dt.timezone.utc)
        pd.DataFrame({"trial_id": ["a"], "stack": ["zeroshot"], "dataset": ["d"], "status": ["ok"],
                      "top1": [50.0 if run["cache_dir"] is None else 51.0], "extras": ["{}"], "fit_seconds": [0.0],
                      "started_at": [now], "finished_at": [now]}).to_parquet(results / "a.parquet")
        return 1.0

    with pytest.raises(AssertionError, match="top1 differs"):
        suite_cost.measure(["d"], ["zeroshot"], workdir=tmp_path, log=lambda *a, **k: None, runner=fake_runner)
    assert calls == [False, True]


def test_overhead_analysis():
    overhead = load("overhead")
    t0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    s = lambda x: t0 + dt.timedelta(seconds=x)
    # 2 slots; start-up 10 s; trials of 4 s wall (3 s fit+eval); 0.5 s gaps; exit 2 s after the last
    starts = [10, 10, 14.5, 14.5, 19, 19]
    rows = pd.DataFrame({"status": ["ok"] * 6, "started_at": [s(x) for x in starts],
                         "finished_at": [s(x + 4) for x in starts], "fit_seconds": [1.0] * 6,
                         "eval_seconds": [2.0] * 6})
    o = overhead.analyse(rows, t0.timestamp(), s(25).timestamp(), concurrency=2)
    assert o["trials"] == 6 and o["concurrency"] == 2
    assert o["in_trial_median"] == pytest.approx(1.0)
    assert o["startup"] == pytest.approx(10.0) and o["tail"] == pytest.approx(2.0)
    assert o["scheduling"] == pytest.approx(25 - 24 / 2)
    assert o["gaps_median"] == pytest.approx(0.5)
    assert o["per_trial_median"] == pytest.approx(1.5)  # 0.5 s gap + 1 s in-trial
    assert o["per_trial_median_steady"] == pytest.approx(1.5)
    overhead.add_startup_ratio(o, bare=4.0)
    assert o["fixed"] == pytest.approx(12.0) and o["startup_ratio"] == pytest.approx(3.0)
    overhead.print_report(o)


def test_gpu_throughput_without_cuda(monkeypatch, capsys):
    gpu = load("gpu_throughput")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "gpu_throughput: no CUDA device, skipped"


def test_gpu_throughput_step_on_cpu():
    gpu = load("gpu_throughput")
    rows = gpu.measure("tiny", batches=(2,), precisions=("fp32", "bf16"), steps=1, warmup=1, device="cpu",
                       n_classes=4, log=lambda *a: None, peaks={"bf16": 2.0, "fp32": 1.0})
    assert [(r["batch"], r["precision"]) for r in rows] == [(2, "fp32"), (2, "bf16")]
    assert [r["mfu"] for r in rows] == [rows[0]["model_tflops"] / 1.0, rows[1]["model_tflops"] / 2.0]
    assert gpu.peak_tflops("NVIDIA H100 PCIe", tf32=True) == {"bf16": 756.0, "fp32": 378.0, "tf32": 378.0}
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB", tf32=False)["fp32"] == 19.5
    assert gpu.peak_tflops("cpu", tf32=False) is None
    assert all(r["error"] is None and r["images_per_s"] > 0 and r["model_tflops"] > 0 for r in rows)
    assert gpu.speedup(rows, 2) > 0
    gpu.print_table(rows)


def test_coop_step_variants_agree_and_are_timed():
    coop_step = load("coop_step")
    out = coop_step.measure("tiny", classes=8, repeats=1, warmup=0, batch=4, log=lambda *a: None)
    assert set(out["seconds"]) == {"official", "truncated", "shared prefix"}
    assert all(t > 0 for t in out["seconds"].values()) and out["speedup"] > 0 and out["speedup_official"] > 0
    assert out["prefix"] == 17 and out["prefix"] < out["length"] < 77
    coop_step.print_table(out)


def test_prompt_step_times_every_prompt_learner():
    prompt_step = load("prompt_step")
    out = prompt_step.measure(which=("tiny",), classes=4, repeats=1, steps=1)
    assert set(out["tiny"]) == {"coop", "prograd", "cocoop"}
    assert all(seconds > 0 for seconds, _ in out["tiny"].values())
    assert [out["tiny"][m][1] for m in ("coop", "prograd", "cocoop")] == [32, 32, 1]


def test_report_scale_writes_a_run_and_its_floor(tmp_path):
    import pyarrow.parquet as pq

    from bench.cli import main
    from bench.results import RunFolder

    report_scale = load("report_scale")
    results, floor = tmp_path / "results", tmp_path / "floor"
    report_scale.write_run(results, 100, log=lambda *a: None)
    status = RunFolder(results, report_scale.RUN).statuses()
    assert len(status) == 100 and sorted(status.values()).count(False) == 100 // report_scale.FAILED_EVERY
    report_scale.write_floor(results, floor)
    assert pq.read_metadata(floor / "rows.parquet").num_rows == 100
    assert pq.read_metadata(floor / "predictions.parquet").num_rows == 99 * report_scale.N_IMAGES
    assert main(["report", "--results", str(results), "--run", report_scale.RUN, "--format", "csv"]) == 0
