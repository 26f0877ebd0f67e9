"""Figures: dots with intervals for one shot count, curves for several, the +mask gains, where masks fall;
every stack its own colour and marker, base and +mask paired by hue."""
from __future__ import annotations

import pandas as pd
import pytest

from bench.report.figures import (accuracy_figure, gains_figure, mask_shares, masks_figure, report_figures,
                           save_figures, stack_styles, tensor_place)
from bench.report.intervals import PredictionScores
from bench.report.tables import load_rows

from fake_runs import write_fake_run

SUITE = ["zeroshot", "linear_probe", "mask", "coop", "coop+mask", "clip_adapter", "clip_adapter+mask",
         "tip_adapter", "tip_adapter+mask", "tip_adapter_f", "tip_adapter_f+mask"]


def test_eleven_stacks_get_distinct_colours_and_markers_with_pairs_sharing_hue_and_shape():
    styles = stack_styles(pd.DataFrame({"stack": SUITE}))
    assert len({s["color"] for s in styles.values()}) == 11
    assert len({(s["marker"], s["markerfacecolor"] == "white") for s in styles.values()}) == 11
    for base, masked in [("coop", "coop+mask"), ("zeroshot", "mask"), ("tip_adapter_f", "tip_adapter_f+mask")]:
        assert styles[base]["marker"] == styles[masked]["marker"]
        assert styles[base]["markerfacecolor"] == "white" and styles[masked]["linestyle"] == "-"


def test_one_shot_count_draws_dots_per_dataset_with_interval_bars(tmp_path):
    folder = write_fake_run(tmp_path)
    rows = load_rows(str(tmp_path), "demo")
    fig = accuracy_figure(rows, PredictionScores(folder.read_predictions))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["syn_colour", "syn_texture", "Average"]
    assert "paired-bootstrap" in ax.get_title()
    assert len(ax.containers) == 4  # one errorbar series per stack
    segments = ax.containers[0].lines[2][0].get_segments()
    assert all(seg[1][1] > seg[0][1] for seg in segments)  # bars of non-zero length


def test_several_shot_counts_draw_curves_over_shots(tmp_path):
    write_fake_run(tmp_path, shots=(1, 4))
    rows = load_rows(str(tmp_path), "demo")
    fig = accuracy_figure(rows)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["syn_colour", "syn_texture", "Average"]
    assert fig.axes[0].get_xscale() == "log"


def test_gain_figure_has_one_point_series_per_mask_pair(tmp_path):
    folder = write_fake_run(tmp_path)
    rows = load_rows(str(tmp_path), "demo")
    fig = gains_figure(rows, PredictionScores(folder.read_predictions))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["coop+mask − coop", "mask − zeroshot"]


def test_mask_figure_reads_the_saved_masks(tmp_path):
    folder = write_fake_run(tmp_path, masks_off=0.25)
    rows = load_rows(str(tmp_path), "demo")
    shares = mask_shares(rows, folder.artifact_dir)
    by_place = shares.groupby(["block", "tensor"])["off"].mean()
    assert by_place[(0, "in_proj")] == pytest.approx(25.0) and by_place[(1, "out_proj")] == pytest.approx(12.5)
    assert masks_figure(rows, folder.artifact_dir) is not None
    assert masks_figure(rows, lambda trial_id: tmp_path / "nowhere") is None


def test_tensor_names_map_to_block_and_tensor():
    assert tensor_place("transformer.resblocks.3.attn.in_proj_weight") == (3, "in_proj")
    assert tensor_place("transformer.resblocks.11.attn.out_proj.weight") == (11, "out_proj")
    assert tensor_place("conv1.weight") == (-1, "conv1")


def test_all_figures_are_saved_beside_each_other(tmp_path):
    folder = write_fake_run(tmp_path)
    rows = load_rows(str(tmp_path), "demo")
    paths = save_figures(report_figures(rows, PredictionScores(folder.read_predictions), folder.artifact_dir),
                         tmp_path / "out" / "fig.png")
    assert [p.name for p in paths] == ["fig.png", "fig_gains.png", "fig_masks.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
