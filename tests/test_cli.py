"""The command line: reports from a run's rows, listings, and one-line errors for mistakes."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.cli import main
from bench.results import RunFolder

ROWS = [  # (stack, dataset, shots, seed, top1)
    ("zeroshot", "syn_colour", 4, 1, 40.0), ("zeroshot", "syn_colour", 4, 2, 40.0),
    ("zeroshot", "syn_shape", 4, 1, 20.0), ("zeroshot", "syn_shape", 4, 2, 20.0),
    ("coop", "syn_colour", 4, 1, 60.0), ("coop", "syn_colour", 4, 2, 70.0),
    ("coop", "syn_shape", 4, 1, 30.0), ("coop", "syn_shape", 4, 2, 30.0),
    ("coop+mask", "syn_colour", 4, 1, 80.0), ("coop+mask", "syn_colour", 4, 2, 80.0),
    ("coop+mask", "syn_shape", 4, 1, 40.0), ("coop+mask", "syn_shape", 4, 2, 40.0),
    ("coop", "syn_colour", 16, 1, 90.0),
]


@pytest.fixture
def run_dir(tmp_path):
    folder = RunFolder(tmp_path, "demo")
    folder.ensure()
    for i, (stack, dataset, shots, seed, top1) in enumerate(ROWS):
        folder.write_row({"trial_id": f"t{i}", "run": "demo", "suite": "synthetic", "stack": stack,
                          "dataset": dataset, "shots": shots, "seed": seed, "top1": top1, "status": "ok",
                          "model": "tiny"})
    folder.write_row({"trial_id": "bad", "run": "demo", "suite": "synthetic", "stack": "coop",
                      "dataset": "syn_shape", "shots": 16, "seed": 1, "status": "error",
                      "error": "ValueError: broken image"})
    return tmp_path


def test_markdown_report_has_means_average_and_gain_rows(run_dir, capsys):
    assert main(["report", "--results", str(run_dir), "--run", "demo", "--shots", "4",
                 "--format", "markdown"]) == 0
    text = capsys.readouterr().out
    assert "| method | syn_colour | syn_shape | Average |" in text
    assert "| zeroshot | 40.00 | 20.00 | 30.00 |" in text
    assert "| coop | 65.00 | 30.00 | 47.50 |" in text
    assert "| coop+mask vs coop | +15.00 | +10.00 | +12.50 |" in text
    assert "| coop vs zeroshot | +25.00 | +10.00 | +17.50 |" in text
    assert "16-shot" not in text


def test_report_std_csv_latex_and_errors(run_dir, capsys):
    assert main(["report", "--results", str(run_dir), "--run", "demo", "--shots", "4", "--std",
                 "--format", "csv"]) == 0
    assert "65.00 ± 5.00" in capsys.readouterr().out
    assert main(["report", "--results", str(run_dir), "--run", "demo", "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert r"\begin{tabular}" in latex and r"coop+mask vs coop" in latex
    assert main(["report", "--results", str(run_dir), "--run", "demo", "--errors"]) == 0
    assert "ValueError: broken image" in capsys.readouterr().out


def test_report_plot_writes_a_png(run_dir, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert main(["report", "--results", str(run_dir), "--run", "demo", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize("argv, fragment", [
    (["run", "--methods", "coop++mask"], "malformed method stack 'coop++mask'"),
    (["run", "--methods", "+mask"], "malformed method stack '+mask'"),
    (["run", "--methods", "zeroshott"], "unknown method 'zeroshott' (did you mean 'zeroshot'?)"),
    (["run", "--suite", "nope"], "unknown suite 'nope'"),
    (["run", "--datasets", "syn_nope"], "unknown dataset 'syn_nope'"),
    (["run", "--shots", "0"], "shots must be positive"),
    (["run", "--seeds", "1,a"], "--seeds must be a comma list of integers"),
    (["run", "--set", "zeroshot.lr=1"], "unknown setting 'zeroshot.lr'"),
    (["run", "--set", "lr=1"], "write METHOD.KEY=VALUE"),
    (["run", "--methods", "mask", "--set", "coop.n_ctx=4"], "'coop' is not in this run, whose methods are mask"),
    (["run", "--methods", "mask", "--set", "mask.layers=9-12"], "mask.layers=9-12: the image encoder has 4 blocks"),
    (["run", "--model", "ViT-Q-99"], "unknown model 'ViT-Q-99'"),
    (["run", "--device", "tpu"], "--device must be cpu or cuda"),
    (["run", "--run", "../x"], "bad run name"),
    (["report", "--run", "missing"], "no run 'missing'"),
    (["run", "--model", "ViT-B-16", "--pretrained", "openai"], "not in the local cache and downloading is off"),
    (["run", "--pretrained", "/no/such/weights.pt"], "neither a pretrained tag of tiny nor a file"),
    (["run", "--suite", "fewshot11", "--model", "tiny", "--pretrained", "bundled", "--data-root", "/no/such/dir"],
     "--data-root /no/such/dir does not exist"),
    (["run", "--suite", "fewshot11", "--model", "tiny", "--pretrained", "bundled"], "needs --data-root"),
])
def test_user_mistakes_print_one_line_and_exit_2(argv, fragment, tmp_path, capsys):
    results = ["--results", str(tmp_path)]
    code = main(argv + results)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["--methods", "mak"], ["--datasets", "syn_colr"],
                                  ["--methods", "zeroshot", "--set", "coop.n_ctx=4"]])
def test_a_typo_is_answered_before_ray_starts(argv, tmp_path):
    """Names and --set targets are checked before Ray (and, for names of installed plugins, torch) loads."""
    ran = subprocess.run([sys.executable, "-X", "importtime", "-m", "bench.cli", "run", "--results", str(tmp_path),
                          *argv], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 2
    errors = [line for line in ran.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("error:"), errors
    imported = {line.rsplit("|", 1)[-1].strip() for line in ran.stderr.splitlines() if line.startswith("import time:")}
    assert "ray" not in imported
    if argv[0] != "--methods" or argv[1] != "mak":  # a name no plugin declares: the plugins load to be sure
        assert "torch" not in imported


def test_cuda_without_a_gpu_is_a_user_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["run", "--device", "cuda", "--results", str(tmp_path)]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_report_on_a_run_without_rows(tmp_path, capsys):
    RunFolder(tmp_path, "empty").ensure()
    assert main(["report", "--results", str(tmp_path), "--run", "empty"]) == 2
    assert "has no rows yet" in capsys.readouterr().err


@pytest.mark.parametrize("kind, expect", [("methods", "zeroshot"), ("suites", "synthetic"),
                                          ("datasets", "syn_colour"), ("models", "tiny"),
                                          ("protocols", "base2new")])
def test_list(kind, expect, capsys):
    assert main(["list", kind]) == 0
    assert expect in capsys.readouterr().out


def test_list_one_method_shows_each_setting_on_a_line_and_the_caption_keeps_its_brackets(capsys):
    assert main(["list", "methods", "amt"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "amt (variant of mask)" and "  gdr = false" in lines and "  lr = 8e-05" in lines
    assert main(["list", "methods"]) == 0
    assert "[variants]" in " ".join(capsys.readouterr().out.split())
    assert main(["list", "methods", "mak"]) == 2


def test_report_names_its_run_and_says_under_each_table_what_is_missing(run_dir, capsys):
    assert main(["report", "--results", str(run_dir), "--shots", "16", "--std", "--format", "markdown"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("run 'demo' (latest of 1; --run NAME)")
    assert "| coop | 90.00 | 90.00 |" in text  # one seed: no "± 0.00"
    assert "missing: coop on syn_shape (seed 1) failed: ValueError: broken image" in text
    assert "`bench report --run demo --errors`" in text
    assert main(["report", "--results", str(run_dir), "--run", "demo", "--shots", "4"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("run 'demo'\n") and "missing" not in text


def test_report_flags_masks_that_switched_nothing_off(tmp_path, capsys):
    folder = RunFolder(tmp_path, "abl")
    folder.ensure()
    for i, (stack, sparsity, top1) in enumerate([("zeroshot", None, 50.0), ("mask", 0.0, 50.0), ("amt", 3.5, 55.0)]):
        folder.write_row({"trial_id": f"t{i}", "run": "abl", "suite": "synthetic_ablation", "stack": stack,
                          "dataset": "syn_colour", "shots": 2, "seed": 1, "top1": top1, "status": "ok",
                          "model": "tiny", "mask_sparsity": sparsity})
    assert main(["report", "--results", str(tmp_path), "--run", "abl", "--format", "markdown"]) == 0
    flagged = [line for line in capsys.readouterr().out.splitlines() if "identical to its base" in line]
    assert flagged == ["mask: its masks switched nothing off in any of its 1 trials (mask_sparsity 0): "
                       "identical to its base"]


def test_piped_report_takes_its_width_from_columns_and_never_cuts_labels(tmp_path):
    folder = RunFolder(tmp_path, "wide")
    folder.ensure()
    datasets = ["syn_colour", "syn_texture", "syn_colourtexture", "syn_noisycolour", "syn_warmlight", "syn_novel"]
    for i, (stack, dataset) in enumerate((s, d) for s in ("zeroshot", "tip_adapter_f", "tip_adapter_f+mask")
                                         for d in datasets):
        folder.write_row({"trial_id": f"t{i}", "run": "wide", "suite": "synthetic", "stack": stack, "dataset": dataset,
                          "shots": 16, "seed": 1, "top1": 50.0 + i, "status": "ok", "model": "tiny"})

    ran = subprocess.run([sys.executable, "-m", "bench.cli", "report", "--results", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert max(map(len, lines)) <= 80  # piped output: 200 columns unless COLUMNS says otherwise
    assert sum("tip_adapter_f+mask vs tip_adapter_f " in line for line in lines) >= 2  # whole, in every block
    assert not any("…" in line for line in lines)


def test_compare_paper_says_each_reason_once_and_that_generated_data_has_no_published_numbers(run_dir, capsys):
    assert main(["report", "--results", str(run_dir), "--run", "demo", "--shots", "4", "--compare", "paper"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "4-shot: no published numbers exist for syn_colour, syn_shape" in "\n".join(lines)
    reasons = [line for line in lines if line.startswith("no paper value for")]
    assert len(reasons) == 1 and all(s in reasons[0] for s in ("zeroshot", "coop", "coop+mask")), reasons
