"""The published numbers (bench/reference/published.csv, package data) and compare()."""
from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from bench.data.real import REAL
from bench.errors import BenchError
from bench.published import COLUMNS, compare, csv_path, load_published, published_cells

FEWSHOT11 = [n for n, info in REAL.items() if info.role == "fewshot"]
PROJECT_DATASETS = set(FEWSHOT11) | {"average", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"}


@pytest.fixture(scope="module")
def pub() -> pd.DataFrame:
    return load_published()


def test_csv_is_tracked_in_git():
    import subprocess

    path = csv_path()
    root = path.parents[2]
    out = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=root)
    assert out.returncode == 1, "harness/reference/published.csv must not be git-ignored"


def test_columns_and_names(pub):
    assert list(pub.columns) == COLUMNS
    assert set(pub.dataset) <= PROJECT_DATASETS
    assert set(pub.backbone) == {"ViT-B-16", "RN50"}
    assert all(re.fullmatch(r"[a-z_]+(\+[a-z_]+)*", m) for m in pub.method)
    assert set(pub.protocol) == {"fewshot", "base2new", "shift"}
    assert set(pub.metric) == {"top1", "top1_new", "hm"} and set(pub.metric[pub.protocol != "base2new"]) == {"top1"}
    assert not pub.duplicated(["source", "table", "protocol", "method", "dataset", "metric", "shots", "backbone",
                               "settings"]).any()


def test_row_counts(pub):
    readme = pub[pub.source == "R-AMT README"]
    assert len(readme) == 6 * 12  # 6 methods x (11 datasets + printed average), 16 shots
    assert set(readme.method) == {"zeroshot", "mask", "coop", "coop+mask", "tip_adapter_f", "tip_adapter_f+mask"}
    fig = pub[pub.source == "R-AMT project page figure"]
    assert len(fig) == 5 * 9 * 12  # 5 shot counts x 9 methods x 12 columns
    for k in (1, 2, 4, 8, 16):
        assert set(fig[fig.shots == k].method) == {"zeroshot", "linear_probe", "coop", "tip_adapter_f", "prograd",
                                                    "vpt_deep", "upt", "amt", "mask"}
    assert len(pub[pub.source == "Tip-Adapter exp.log"]) == 11 * 16
    assert len(pub[pub.source == "APE notebook"]) == 11 * 21
    assert len(pub[pub.source == "third-party plotting script"]) == 55
    b2n = pub[pub.source == "CoCoOp paper Table 1"]
    assert len(b2n) == 3 * 12 * 3 and set(b2n.method) == {"zeroshot", "coop", "cocoop"}  # (11 + Average) x base/new/HM
    shift = pub[pub.source == "CoCoOp paper Table 3"]
    assert len(shift) == 2 * 5 and set(shift.dataset) == {"imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a",
                                                          "imagenet_r"}
    averages = pub[pub.source == "CLIP-SVD README (third-party quote)"]  # CLIP-LoRA and LP++, averages only
    assert len(averages) == 2 * 5 and set(averages.dataset) == {"average"} and set(averages.method) == {"lora", "lp_pp"}
    assert len(pub) == 72 + 540 + 176 + 231 + 55 + 108 + 10 + 10


def test_only_the_figure_linear_probe_rows_are_doubtful(pub):
    doubtful = pub[pub.doubtful]
    assert set(zip(doubtful.source, doubtful.method, doubtful.backbone)) == {
        ("R-AMT project page figure", "linear_probe", "ViT-B-16")}
    assert len(doubtful) == 60 and doubtful.note.str.contains("RN50").all()
    assert not published_cells(16, "ViT-B-16").method.eq("linear_probe").any()
    assert published_cells(16, "ViT-B-16", doubtful=True).method.eq("linear_probe").any()


def test_base_to_new_averages_follow_cocoops_convention(pub):
    """Per dataset HM = HM(base, new); the printed Average base/new are the means, the Average HM is the HM of
    those averages (71.66 for CoOp) and not the mean of the per-dataset HMs (70.83)."""
    b2n = pub[pub.protocol == "base2new"]
    for method, g in b2n.groupby("method"):
        cell = g.set_index(["dataset", "metric"]).top1
        datasets = [d for d in dict.fromkeys(g.dataset) if d != "average"]
        for d in datasets:
            base, new = cell[(d, "top1")], cell[(d, "top1_new")]
            assert abs(2 * base * new / (base + new) - cell[(d, "hm")]) < 0.006, (method, d)
        base, new = (cell[("average", m)] for m in ("top1", "top1_new"))
        assert abs(sum(cell[(d, "top1")] for d in datasets) / 11 - base) < 0.006
        assert abs(sum(cell[(d, "top1_new")] for d in datasets) / 11 - new) < 0.006
        assert abs(2 * base * new / (base + new) - cell[("average", "hm")]) < 0.006
    coop_hm = b2n[(b2n.method == "coop") & (b2n.metric == "hm") & (b2n.dataset != "average")].top1.mean()
    assert round(coop_hm, 2) == 70.83


def _cell(pub, source, method, dataset, shots):
    hit = pub[(pub.source == source) & (pub.method == method) & (pub.dataset == dataset) & (pub.shots == shots)]
    assert len(hit) == 1, (source, method, dataset, shots)
    return hit.iloc[0]


def test_spot_values(pub):
    assert _cell(pub, "R-AMT README", "tip_adapter_f+mask", "fgvc_aircraft", 16).top1 == 61.07
    assert _cell(pub, "R-AMT README", "coop+mask", "average", 16).top1 == 83.16
    assert _cell(pub, "R-AMT README", "zeroshot", "eurosat", 16).top1 == 47.60
    r = _cell(pub, "R-AMT project page figure", "mask", "eurosat", 1)
    assert (r.top1, r["std"]) == (61.03, 1.82)
    r = _cell(pub, "R-AMT project page figure", "amt", "sun397", 8)
    assert (r.top1, r["std"]) == (68.30, 0.42) and "copy error" in r.note
    lp = _cell(pub, "R-AMT project page figure", "linear_probe", "oxford_pets", 2)
    assert lp.top1 == 43.55 and "RN50" in lp.note and math.isnan(lp["std"])
    assert "Tip-Adapter-F" in _cell(pub, "R-AMT project page figure", "tip_adapter_f", "dtd", 4).note
    assert _cell(pub, "R-AMT project page figure", "coop", "stanford_cars", 8).top1 == 78.79
    assert _cell(pub, "Tip-Adapter exp.log", "tip_adapter_f", "imagenet", 16).top1 == 65.51
    assert _cell(pub, "Tip-Adapter exp.log", "zeroshot", "eurosat", 0).top1 == 37.52
    assert _cell(pub, "APE notebook", "coop", "fgvc_aircraft", 1).top1 == 8.87
    assert _cell(pub, "third-party plotting script", "linear_probe", "dtd", 16).top1 == 63.97


def test_printed_averages_match_their_rows(pub):
    fewshot = pub[pub.protocol == "fewshot"]
    for (source, table, method, shots, backbone), g in fewshot.groupby(["source", "table", "method", "shots", "backbone"]):
        if "average" not in set(g.dataset) or set(g.dataset) == {"average"}:  # an average published alone
            continue
        mean = g[g.dataset != "average"].top1.mean()
        assert abs(mean - g[g.dataset == "average"].top1.iloc[0]) < 0.015, (source, method, shots)


def test_readme_table_equals_the_figure_at_16_shots(pub):
    readme = pub[pub.source == "R-AMT README"].set_index(["method", "dataset"]).top1
    fig = pub[(pub.source == "R-AMT project page figure") & (pub.shots == 16)].set_index(["method", "dataset"]).top1
    shared = readme.index.intersection(fig.index)
    assert len(shared) == 4 * 12
    assert (readme[shared] == fig[shared]).all()


def _run_table() -> pd.DataFrame:
    return pd.DataFrame({"imagenet": [72.5, 73.0, 66.7], "eurosat": [90.0, float("nan"), 48.0],
                         "average": [80.0, 82.0, 65.0]},
                        index=pd.Index(["mask", "coop+mask", "linear_probe+x"], name="stack"))


def test_compare_puts_paper_beside_each_cell():
    table = _run_table().rename(index={"linear_probe+x": "zeroshot"})
    out = compare(table, 16, "ViT-B-16")
    assert out.loc["mask", ("imagenet", "paper")] == 73.07
    assert out.loc["mask", ("imagenet", "ours")] == 72.5
    assert out.loc["mask", ("imagenet", "diff")] == pytest.approx(72.5 - 73.07)
    assert out.loc["coop+mask", ("eurosat", "paper")] == 90.20 and math.isnan(out.loc["coop+mask", ("eurosat", "diff")])
    assert out.loc["coop+mask", ("average", "paper")] == 83.16
    assert out.loc["zeroshot", ("eurosat", "diff")] == pytest.approx(0.4)
    assert list(out.columns.get_level_values(0)[:3]) == ["imagenet"] * 3
    assert "README" in out.attrs["notes"][("mask", "imagenet")]


def test_compare_leaves_unpublished_cells_empty():
    out = compare(_run_table(), 4, "ViT-B-16")
    assert out.loc["mask", ("imagenet", "paper")] == 70.80  # the figure's 4-shot R-AMT
    assert math.isnan(out.loc["coop+mask", ("imagenet", "paper")])  # +R-AMT only published at 16 shots
    assert math.isnan(out.loc["linear_probe+x", ("average", "paper")])


def test_compare_other_backbones_and_sources():
    table = pd.DataFrame({"imagenet": [60.0, 65.0]}, index=["zeroshot", "tip_adapter_f"])
    out = compare(table, 8, "RN50")
    assert out.loc["zeroshot", ("imagenet", "paper")] == 60.32  # zero-shot (shots 0) holds for every K
    assert out.loc["tip_adapter_f", ("imagenet", "paper")] == 64.00  # Tip-Adapter exp.log before APE
    assert compare(table, 8, "RN50", source="APE notebook").loc["zeroshot", ("imagenet", "paper")] == 60.31
    assert math.isnan(compare(table, 8, "ViT-B-32").loc["zeroshot", ("imagenet", "paper")])
    with pytest.raises(BenchError):
        published_cells(8, "RN50", source="my blog")


def test_reference_readme_names_every_source():
    text = (csv_path().parent / "README.md").read_text()
    for source in set(load_published().source):
        assert source in text
