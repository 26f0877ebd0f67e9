"""The paper's tables as the papers report them: base-to-new (CoCoOp's HM convention), domain shift (source and
targets, Average over the targets) and `bench report --compare paper`, on fake runs in the row schema."""
from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from bench.cli import main
from bench.published import load_published
from bench.results import RunFolder
from bench.suite import load_suite

FEWSHOT11 = load_suite("fewshot11").datasets
TARGETS = ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]


def _row(i, stack, dataset, seed=1, shots=16, top1=80.0, **kw):
    row = {"trial_id": f"t{i}", "run": "r", "suite": "fewshot11", "stack": stack, "dataset": dataset,
           "shots": shots, "seed": seed, "top1": top1, "status": "ok", "model": "ViT-B-16", "pretrained": "openai",
           "protocol": "fewshot", "settings": "{}"}
    row.update(kw)
    return row


def _write(root, rows, run="r"):
    folder = RunFolder(root, run)
    folder.ensure()
    for row in rows:
        folder.write_row({**row, "run": run})
    return run


def _report(root, run, *extra, width=None):
    """stdout of `bench report --compare paper` (markdown unless a width asks for the terminal table)."""
    import bench.report.printing as cli

    buffer = io.StringIO()
    saved = cli.out
    cli.out = Console(file=buffer, width=width or 200, force_terminal=False, color_system=None)
    try:
        args = ["report", "--results", str(root), "--run", run, "--compare", "paper", *extra]
        if width is None:
            args += ["--format", "markdown"]
        assert main(args) == 0
    finally:
        cli.out = saved
    return buffer.getvalue()


def _line(text, start):
    return next(ln for ln in text.splitlines() if ln.startswith(start))


# -- base-to-new --------------------------------------------------------------------------------------------
def _published_b2n(method):
    pub = load_published()
    pub = pub[(pub.protocol == "base2new") & (pub.method == method)]
    return {(r.dataset, r.metric): r.top1 for r in pub.itertuples()}


def _b2n_rows(write_protocol=True):
    """CoCoOp's published CoOp base and new accuracies per dataset, seeds 1 and 2 one point either side."""
    pub, rows = _published_b2n("coop"), []
    for d in FEWSHOT11:
        for seed, delta in ((1, -1.0), (2, 1.0)):
            base, new = pub[(d, "top1")] + delta, pub[(d, "top1_new")] - delta
            rows.append(_row(len(rows), "coop", d, seed, top1=base, top1_new=new, hm=2 * base * new / (base + new),
                             suite="base2new", settings='{"coop": {"ctx_init": "a photo of a", "n_ctx": 4}}',
                             protocol="base2new" if write_protocol else None))
    return rows


@pytest.mark.parametrize("write_protocol", [True, False])
def test_base_to_new_reports_new_classes_and_hm_by_cocoops_convention(tmp_path, write_protocol):
    run = _write(tmp_path, _b2n_rows(write_protocol))
    text = _report(tmp_path, run)
    assert "16-shot new-class top-1" in text and "16-shot harmonic mean" in text
    pub = _published_b2n("coop")
    hm_line = _line(text.split("16-shot harmonic mean")[1], "| coop |")
    cells = [c.strip() for c in hm_line.strip("|").split("|")]
    # HM of the seed means = the published per-dataset HM; Average = HM(average base, average new) = 71.66
    assert float(cells[1 + FEWSHOT11.index("dtd")]) == pytest.approx(pub[("dtd", "hm")], abs=0.01)
    assert float(cells[-1]) == pytest.approx(71.66, abs=0.01)
    # the comparison is with the base-to-new table: base-class caltech101 against 98.00, not the few-shot 97.00
    compared = _line(text.split("16-shot: this run vs published")[1], "| coop |")
    assert "| 98.00 | 98.00 | +0.00 |" in compared and "97.00" not in compared
    compared_hm = _line(text.split("16-shot hm: this run vs published")[1], "| coop |")
    assert compared_hm.endswith("| 71.66 | 71.66 | +0.00 |")
    assert "CoCoOp paper Table 1" in text


def test_base2new_suite_runs_coop_as_cocoop_published_it():
    from bench.registry import get_method

    suite = load_suite("base2new")
    for dataset in ("imagenet", "dtd"):
        overrides = suite.overrides_for(dataset)["coop"]
        assert overrides == {"ctx_init": "a photo of a", "n_ctx": 4}  # = the published row's settings
        config = get_method("coop").make_config(dataset, 16, overrides)
        assert (config.ctx_init, config.n_ctx, config.epochs) == ("a photo of a", 4, 50 if dataset == "imagenet" else 200)
    pub = load_published()
    assert set(pub.settings[(pub.protocol == "base2new") & (pub.method == "coop")]) == {
        '{"coop": {"ctx_init": "a photo of a", "n_ctx": 4}}'}


# -- domain shift -------------------------------------------------------------------------------------------
def _shift_rows(write_protocol=True):
    rows = []
    for seed in (1, 2):
        for stack, base in (("zeroshot", 66.73), ("mask", 73.0)):
            extras = {f"top1.{t}": base - 10 - i for i, t in enumerate(TARGETS)}
            rows.append(_row(len(rows), stack, "imagenet", seed, top1=base, extras=json.dumps(extras),
                             suite="imagenet_shift", protocol="shift" if write_protocol else None))
    return rows


@pytest.mark.parametrize("write_protocol", [True, False])
def test_domain_shift_shows_source_and_targets_and_averages_the_targets(tmp_path, write_protocol):
    run = _write(tmp_path, _shift_rows(write_protocol))
    text = _report(tmp_path, run)
    header = _line(text, "| method |")
    assert header.split("|")[2:8] == [" imagenet ", " imagenet_v2 ", " imagenet_sketch ", " imagenet_a ",
                                      " imagenet_r ", " Average "]
    line = _line(text, "| mask |")
    assert line.split("|")[-2].strip() == f"{(63 + 62 + 61 + 60) / 4:.2f}"  # targets only, not ImageNet's 73
    zs = _line(text.split("this run vs published")[1], "| zeroshot |")
    assert "| 66.73 | 66.73 | +0.00 |" in zs and "60.83" in zs  # CoCoOp's zero-shot ImageNet and -V2


def test_stacks_that_cannot_do_base_to_new_are_refused_at_planning():
    from bench import BenchError
    from bench.plan import plan_trials

    for stack in ("linear_probe", "tip_adapter", "mask+tip_adapter_f"):
        with pytest.raises(BenchError, match="cannot classify classes it was not trained on"):
            plan_trials(load_suite("base2new"), run="b", results="/nonexistent", methods=[stack], pretrained="none")


# -- --compare paper on few-shot runs ------------------------------------------------------------------------
def _fewshot(stacks, shots=16, **kw):
    return [_row(i * 100 + j, s, d, shots=shots, **kw) for i, s in enumerate(stacks) for j, d in enumerate(FEWSHOT11)]


def test_doubtful_linear_probe_rows_are_left_out_and_say_why(tmp_path):
    run = _write(tmp_path, _fewshot(["linear_probe", "mask"]))
    text = _report(tmp_path, run)
    compared = text.split("this run vs published")[1]
    assert "56.03" not in _line(compared, "| linear_probe |")  # the figure's "Linear Prob" ImageNet 16-shot
    assert "no paper value for linear_probe: its published numbers are flagged doubtful" in text
    assert "RN50" in _line(text, "no paper value for linear_probe")


def test_notes_of_the_published_cells_are_printed(tmp_path):
    run = _write(tmp_path, _fewshot(["tip_adapter_f", "coop+mask"]))
    text = _report(tmp_path, run)
    assert "probably Tip-Adapter-F" in _line(text, "paper: tip_adapter_f")
    assert "how the combination was trained is not published" in _line(text, "paper: coop+mask")


def test_both_spellings_of_a_stack_give_one_row_with_its_paper_value(tmp_path):
    rows = [_row(j, "tip_adapter_f+mask" if j % 2 else "mask+tip_adapter_f", d) for j, d in enumerate(FEWSHOT11)]
    text = _report(tmp_path, _write(tmp_path, rows))
    compared = text.split("this run vs published")[1]
    spelled = [ln for ln in compared.splitlines() if "tip_adapter_f" in ln and ln.startswith("|")]
    assert len(spelled) == 1 and "61.07" in spelled[0]  # TIP-Adapter+R-AMT, FGVC Aircraft


def test_gdr_off_and_non_openai_rows_get_no_r_amt_value_and_say_why(tmp_path):
    rows = _fewshot(["mask"], settings='{"mask": {"gdr": false}}')
    rows += [{**r, "trial_id": r["trial_id"] + "w", "pretrained": "laion2b_s34b_b88k"} for r in _fewshot(["mask"])]
    rows += [{**r, "trial_id": r["trial_id"] + "a"} for r in _fewshot(["amt"])]
    text = _report(tmp_path, _write(tmp_path, rows))
    compared = text.split("this run vs published")[1]
    assert "| 72.60 |" in _line(compared, "| amt |")  # a stack `amt` with default settings: the AMT row
    assert "73.07" not in _line(compared, "| mask (gdr=false")  # R-AMT's ImageNet 16-shot
    assert not any(ln.startswith("| mask (weights=laion2b") and "73.07" in ln for ln in compared.splitlines())
    assert "no paper value for mask (gdr=false" in text and "published with settings {}" in text
    assert "not OpenAI's" in _line(text, "no paper value for mask (weights=laion2b")


def test_zero_shot_compares_at_any_shot_count(tmp_path):
    vit = _fewshot(["zeroshot"], shots=3)
    rn50 = [{**r, "trial_id": r["trial_id"] + "r", "model": "RN50"} for r in vit]
    text = _report(tmp_path, _write(tmp_path, vit + rn50))
    # ViT-B-16 zero-shot is stored once per shot count (none at 3), RN50 once for every K (shots 0)
    assert "| 66.73 |" in _line(text.split("published (ViT-B-16)")[1], "| zeroshot (model=ViT-B-16) |")
    assert "| 60.32 |" in _line(text.split("published (RN50)")[1], "| zeroshot (model=RN50) |")


def test_full_fewshot11_comparison_reads_uncut_at_200_columns(tmp_path):
    stacks = ["zeroshot", "linear_probe", "coop", "tip_adapter_f", "mask", "coop+mask", "tip_adapter_f+mask"]
    run = _write(tmp_path, _fewshot(stacks))
    text = _report(tmp_path, run, width=200)
    assert "…" not in text
    assert max(len(ln) for ln in text.splitlines()) <= 200
    compared = text[text.index("this run vs published"):]
    for d in FEWSHOT11:
        assert d in compared
    markdown = _report(tmp_path, run)
    header = _line(markdown.split("this run vs published")[1], "| method |")
    assert header.count(" ours ") == 12 and "average paper" in header.replace("Average", "average")


# -- the paper's other rows: ProGrad at 1-16 shots, CoCoOp's base-to-new row ---------------------------------
def test_prograd_rows_line_up_with_the_published_prograd_cells_at_every_shot_count(tmp_path):
    pub = load_published()
    fig = pub[(pub.source == "R-AMT project page figure") & (pub.method == "prograd")]
    rows = []
    for shots in (1, 2, 4, 8, 16):
        cells = fig[fig.shots == shots].set_index("dataset").top1
        rows += [_row(len(rows) + j, "prograd", d, shots=shots, top1=cells[d]) for j, d in enumerate(FEWSHOT11)]
    text = _report(tmp_path, _write(tmp_path, rows))
    for shots in (1, 2, 4, 8, 16):
        printed = fig[(fig.shots == shots) & (fig.dataset == "average")].top1.iloc[0]
        line = _line(text.split(f"{shots}-shot: this run vs published")[1], "| prograd |")
        ours, paper, diff = (float(c) for c in line.strip("|").split("|")[-3:])
        assert paper == printed and ours == pytest.approx(printed, abs=0.015) and abs(diff) <= 0.015
        assert f"| {fig[(fig.shots == shots) & (fig.dataset == 'dtd')].top1.iloc[0]:.2f} |" in line


def test_cocoop_base_to_new_row_lines_up_with_its_published_row(tmp_path):
    pub = _published_b2n("cocoop")
    rows = [_row(i, "cocoop", d, top1=pub[(d, "top1")], top1_new=pub[(d, "top1_new")], hm=pub[(d, "hm")],
                 suite="base2new", protocol="base2new") for i, d in enumerate(FEWSHOT11)]
    text = _report(tmp_path, _write(tmp_path, rows))
    cells = _line(text.split("16-shot harmonic mean")[1], "| cocoop |").strip("|").split("|")
    assert float(cells[-1]) == pytest.approx(75.83, abs=0.01)  # HM(80.47, 71.69)
    assert _line(text.split("16-shot: this run vs published")[1], "| cocoop |").endswith("| 80.47 | 80.47 | +0.00 |")
    assert _line(text.split("16-shot top1_new: this run vs published")[1], "| cocoop |").endswith(
        "| 71.69 | 71.69 | +0.00 |")
    assert _line(text.split("16-shot hm: this run vs published")[1], "| cocoop |").endswith("| 75.83 | 75.83 | +0.00 |")
