"""Own data: image folders and lists as datasets, in every layout, end to end, and every bad-data case."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.data.catalog import canonical_entry, get_dataset, load_fewshot
from bench.data.splits import read_split_json
from bench.spec import TrialSpec
from bench.trial import build_context, run_trial

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"red_apple": (220, 30, 30), "green-leaf": (30, 200, 40), "blue_sky": (30, 40, 220)}


def png(path: Path, rgb, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (16, 16, 3)).astype(np.uint8)
    img[4:12, 4:12] = rgb
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def class_folders(root: Path, counts=(10, 10, 10)) -> Path:
    for (cname, rgb), n in zip(COLOURS.items(), counts):
        for i in range(n):
            png(root / cname / f"img_{i:03d}.png", rgb, hash((cname, i)) % 1000)
    return root


def split_folders(root: Path, val: bool = True) -> Path:
    for part, n in (("train", 6), ("val", 2), ("test", 3)):
        if part == "val" and not val:
            continue
        for cname, rgb in COLOURS.items():
            for i in range(n):
                png(root / part / cname / f"{i}.png", rgb, i)
    return root


def image_list(root: Path, fmt: str, with_split: bool = True) -> Path:
    rows = []
    for cname, rgb in COLOURS.items():
        for i, part in enumerate(["train"] * 5 + ["val"] * 2 + ["test"] * 3):
            rel = f"pics/{cname}_{i}.png"
            png(root / rel, rgb, i)
            rows.append({"path": rel, "label": cname, **({"split": part} if with_split else {})})
    if fmt == "csv":
        head = "path,label,split" if with_split else "path,label"
        lines = [head] + [",".join(r.values()) for r in rows]
        (root / "list.csv").write_text("\n".join(lines) + "\n")
        return root / "list.csv"
    (root / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "list.jsonl"


def coop_split_folder(root: Path) -> Path:
    split = {"train": [], "val": [], "test": []}
    for label, (cname, rgb) in enumerate(COLOURS.items()):
        for part, n in (("train", 5), ("val", 2), ("test", 3)):
            for i in range(n):
                rel = f"{cname}/{part}_{i}.png"
                png(root / "images" / rel, rgb, i)
                split[part].append([rel, label, cname])
    (root / "split_zhou_Mine.json").write_text(json.dumps(split))
    return root


def rel_split(splits, root: Path) -> dict:
    return {k: [(os.path.relpath(d.path, root), d.label, d.classname) for d in getattr(splits, k)]
            for k in ("train", "val", "test")}


# -- class folders: the 50/20/30 split --------------------------------------------------------------

def test_class_folders_are_split_50_20_30_per_class_and_written_as_a_coop_split(tmp_path):
    folder = class_folders(tmp_path / "my_cells", counts=(10, 7, 23))
    data = get_dataset(str(folder)).read(None)
    assert data.name == "my_cells" and data.template == "a photo of a {}." and data.templates == (data.template,)
    assert data.classnames == ["blue sky", "green leaf", "red apple"]  # sorted folders, "_" and "-" to spaces
    everything = {str(p) for p in folder.rglob("*.png")}
    parts = [{d.path for d in getattr(data, k)} for k in ("train", "val", "test")]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
    assert set.union(*parts) == everything
    for label, n in enumerate((23, 7, 10)):  # blue_sky 23, green-leaf 7, red_apple 10 images
        sizes = [sum(d.label == label for d in getattr(data, k)) for k in ("train", "val", "test")]
        assert sizes == [round(n * 0.5), round(n * 0.2), n - round(n * 0.5) - round(n * 0.2)]
    written = read_split_json(folder / "split_bench.json", folder)
    assert {k: [(d.path, d.label, d.classname) for d in v] for k, v in written.items()} == \
        {k: [(d.path, d.label, d.classname) for d in getattr(data, k)] for k in ("train", "val", "test")}


def test_the_split_is_stable_across_runs_paths_and_file_order_and_an_edit_changes_one_class(tmp_path):
    a = class_folders(tmp_path / "a" / "cells")
    first = rel_split(get_dataset(str(a)).read(None), a)
    stamp = (a / "split_bench.json").stat().st_mtime_ns
    assert rel_split(get_dataset(str(a)).read(None), a) == first
    assert (a / "split_bench.json").stat().st_mtime_ns == stamp  # same split: the file is left alone
    # another machine: another path, files created in reverse order
    b = tmp_path / "elsewhere" / "cells"
    for src in sorted(a.rglob("*.png"), reverse=True):
        (b / src.relative_to(a)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, b / src.relative_to(a))
    assert rel_split(get_dataset(str(b)).read(None), b) == first
    # a new image in one class: only that class's split changes, and the split file follows
    png(b / "red_apple" / "img_999.png", (220, 30, 30), 5)
    edited = rel_split(get_dataset(str(b)).read(None), b)
    for k in ("train", "val", "test"):
        assert [r for r in edited[k] if not r[0].startswith("red_apple")] == \
            [r for r in first[k] if not r[0].startswith("red_apple")]
    assert "red_apple/img_999.png" in json.dumps(json.loads((b / "split_bench.json").read_text()))


def test_classnames_txt_maps_folders_and_non_images_are_skipped_with_one_warning(tmp_path, capsys):
    folder = class_folders(tmp_path / "cells")
    (folder / "classnames.txt").write_text("red_apple Granny Smith\n")
    (folder / "red_apple" / "notes.txt").write_text("not an image")
    (folder / "blue_sky" / "Thumbs.db").write_bytes(b"\0")
    ds = get_dataset(str(folder))
    assert ds.read(None).classnames == ["blue sky", "green leaf", "Granny Smith"]
    ds.preflight(None)
    err = capsys.readouterr().err
    assert "skipped 2 files" in err and len(err.strip().splitlines()) == 1


# -- the other layouts ------------------------------------------------------------------------------

def test_train_val_test_folders(tmp_path):
    data = get_dataset(str(split_folders(tmp_path / "tvt"))).read(None)
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 9)
    assert all("/train/" in d.path for d in data.train) and all("/test/" in d.path for d in data.test)
    assert not (tmp_path / "tvt" / "split_bench.json").exists()  # the folders are the split


def test_without_val_the_fewshot_val_is_drawn_from_train_disjoint_from_the_shots(tmp_path):
    entry = str(split_folders(tmp_path / "tv", val=False))
    assert get_dataset(entry).read(None).val == get_dataset(entry).read(None).train
    fs, short = load_fewshot(entry, None, 2, 1)
    assert len(fs.train) == 6 and len(fs.val) == 6 and not short
    assert {d.path for d in fs.train}.isdisjoint({d.path for d in fs.val})
    assert all("/train/" in d.path for d in fs.val)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_lists_with_a_split_column(tmp_path, fmt):
    data = get_dataset(str(image_list(tmp_path, fmt))).read(None)
    assert data.name == "list" and data.classnames == ["blue sky", "green leaf", "red apple"]
    assert (len(data.train), len(data.val), len(data.test)) == (15, 6, 9)
    assert all(Path(d.path).is_absolute() and Path(d.path).is_file() for d in data.test)


def test_a_list_without_split_is_split_like_class_folders_and_the_split_is_written_beside_it(tmp_path):
    lst = image_list(tmp_path, "csv", with_split=False)
    data = get_dataset(str(lst)).read(None)
    assert (len(data.train), len(data.val), len(data.test)) == (15, 6, 9)  # 10 per class: 5/2/3
    written = read_split_json(tmp_path / "list.split_bench.json", tmp_path)
    assert [d.path for d in written["test"]] == [d.path for d in data.test]


def test_a_folder_with_a_coop_split_json(tmp_path):
    folder = coop_split_folder(tmp_path / "mine")
    data = get_dataset(str(folder)).read(None)
    assert (len(data.train), len(data.val), len(data.test)) == (15, 6, 9)
    assert data.train[0].path == str(folder / "images" / "red_apple" / "train_0.png")  # paths under images/
    assert data.classnames == list(COLOURS)  # a split file's names are taken as they are


def test_a_suite_table_names_the_dataset_with_an_ensemble_and_a_class_map(tmp_path):
    folder = class_folders(tmp_path / "cells")
    suite = tmp_path / "mine.toml"
    suite.write_text(
        'shots = [2]\nseeds = [1]\nmethods = ["zeroshot"]\n'
        'datasets = ["syn_colour", "cells/", {path = "cells", name = "cells_ens", '
        'templates = ["a photo of a {}.", "a blurry photo of a {}."], classnames = {blue_sky = "sky"}}]\n')
    from bench.suite import load_suite

    items = load_suite(str(suite)).datasets
    entries = [canonical_entry(d) for d in items]
    assert entries[0] == "syn_colour" and entries[1] == str(folder)
    table = get_dataset(entries[2])
    assert table.name == "cells_ens" and table.templates == ("a photo of a {}.", "a blurry photo of a {}.")
    data = table.read(None)
    assert data.classnames[0] == "sky" and data.templates == table.templates
    # the ensemble: per template normalise, average, re-normalise
    spec = TrialSpec(run="r", suite="t", dataset=entries[2], shots=2, seed=1, stack="zeroshot", pretrained="none")
    ctx = build_context(spec)
    singles = [ctx.text_weights(templates=[t]) for t in table.templates]
    expected = torch.nn.functional.normalize(torch.stack(singles).mean(0), dim=-1)
    assert torch.allclose(ctx.text_weights(), expected, atol=1e-6)
    assert torch.allclose(ctx.clf.head.weights, expected, atol=1e-6)
    assert not torch.allclose(singles[0], singles[1])


def test_classes_smaller_than_k_are_taken_whole_and_the_row_says_so(tmp_path):
    folder = class_folders(tmp_path / "cells", counts=(8, 8, 8))  # 4 train images per class
    row = run_trial(TrialSpec(run="r", suite="t", dataset=str(folder), shots=16, seed=1, stack="zeroshot",
                              pretrained="none"))
    assert row["n_train"] == 12 and json.loads(row["extras"])["classes_with_fewer_than_k"] == 3


# -- bad data: one line naming the file or class and the fix, exit 2, nothing written -----------------

def _bad(tmp_path: Path, case: str) -> tuple[str, str]:
    """(the --datasets entry, a fragment the error must hold)."""
    d = tmp_path / "bad"
    if case == "empty folder":
        d.mkdir()
        return str(d), "is empty"
    if case == "one class":
        class_folders(d)
        shutil.rmtree(d / "green-leaf"), shutil.rmtree(d / "blue_sky")
        return str(d), "needs at least two"
    if case == "empty class":
        class_folders(d)
        (d / "grey").mkdir()
        return str(d), f"class folder {d / 'grey'} holds no images"
    if case == "too small class":
        class_folders(d, counts=(10, 3, 10))
        return str(d), "class 'green-leaf' has 3 images"
    if case == "unreadable image":
        class_folders(d)
        (d / "blue_sky" / "img_003.png").write_bytes(b"\x89PNG garbage")
        return str(d), f"image {d / 'blue_sky' / 'img_003.png'} cannot be read"
    if case == "duplicate names":
        class_folders(d)
        shutil.copytree(d / "blue_sky", d / "blue-sky")
        return str(d), "'blue-sky' and 'blue_sky' both become the class name 'blue sky'"
    if case == "stray classnames":
        class_folders(d)
        (d / "classnames.txt").write_text("purple_rain Purple\n")
        return str(d), "'purple_rain', which is not one of its class folders"
    if case == "csv missing column":
        d.mkdir()
        (d / "l.csv").write_text("path,split\na.png,train\n")
        return str(d / "l.csv"), "has no 'label' column"
    if case == "csv unknown split":
        lst = image_list(d, "csv")
        lst.write_text(lst.read_text().replace(",val\n", ",valid\n", 1))
        return str(lst), "split 'valid' is not train, val or test"
    if case == "csv missing image":
        lst = image_list(d, "csv")
        lst.write_text(lst.read_text() + "pics/nope.png,red_apple,test\n")
        return str(lst), f"image {d / 'pics' / 'nope.png'} does not exist"
    if case == "csv non-image":
        lst = image_list(d, "csv")
        (d / "readme.txt").write_text("x")
        lst.write_text(lst.read_text() + "readme.txt,red_apple,test\n")
        return str(lst), "is not an image file"
    if case == "jsonl bad line":
        lst = image_list(d, "jsonl")
        lst.write_text(lst.read_text() + "{oops\n")
        return str(lst), "line 31 is not JSON"
    if case == "split json missing images":
        coop_split_folder(d)
        (d / "images" / "red_apple" / "test_1.png").unlink()
        return str(d), "1 listed images do not exist"
    if case == "no such path":
        return str(d / "nothing"), "no such folder or file"
    raise AssertionError(case)


BAD = ["empty folder", "one class", "empty class", "too small class", "unreadable image", "duplicate names",
       "stray classnames", "csv missing column", "csv unknown split", "csv missing image", "csv non-image",
       "jsonl bad line", "split json missing images", "no such path"]


@pytest.mark.parametrize("case", BAD)
def test_bad_own_data_is_one_line_exit_2_and_nothing_written(tmp_path, case, capsys):
    entry, fragment = _bad(tmp_path, case)
    before = sorted(p for p in tmp_path.rglob("*"))
    results = tmp_path / "results"
    code = main(["run", "--datasets", entry, "--methods", "zeroshot", "--pretrained", "none", "--no-report",
                 "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # no split file, no results folder


def test_a_folder_named_like_a_registered_dataset_must_be_renamed(tmp_path, capsys):
    folder = class_folders(tmp_path / "dtd")
    assert main(["data", "split", "--dataset", str(folder), "--shots", "1", "--seed", "1"]) == 2
    assert "the name of a registered dataset" in capsys.readouterr().err


# -- the data commands and `bench run`, end to end ----------------------------------------------------

def test_data_check_and_split_work_for_every_layout(tmp_path, capsys):
    entries = [str(class_folders(tmp_path / "cells")), str(split_folders(tmp_path / "tvt", val=False)),
               str(image_list(tmp_path / "l", "csv")), str(image_list(tmp_path / "j", "jsonl")),
               str(coop_split_folder(tmp_path / "sj"))]
    assert main(["data", "check", "--datasets", ",".join(entries)]) == 0
    out = capsys.readouterr().out
    assert "5 of 5 ready" in out and out.count(" ok ") == 5 and "= train" in out
    for entry in entries:
        assert main(["data", "split", "--dataset", entry, "--shots", "2", "--seed", "1"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert len(result["train"]) == 6 and len(result["val"]) == 6
        assert all(Path(result["image_dir"], r[0]).is_file() for r in result["train"])


def test_data_check_exits_non_zero_when_it_reports_an_error(tmp_path, capsys):
    good = class_folders(tmp_path / "cells")
    broken = class_folders(tmp_path / "broken")
    (broken / "red_apple" / "img_000.png").write_bytes(b"not an image")
    assert main(["data", "check", "--datasets", str(good)]) == 0
    capsys.readouterr()
    assert main(["data", "check", "--datasets", f"{good},{broken}"]) == 1
    assert "1 of 2 ready" in capsys.readouterr().out


def test_bench_run_end_to_end_on_own_data(tmp_path):
    entries = [class_folders(tmp_path / "cells"), image_list(tmp_path / "l", "csv"),
               coop_split_folder(tmp_path / "sj")]
    cmd = [sys.executable, "-m", "bench.cli", "run", "--run", "own", "--datasets", ",".join(map(str, entries)),
           "--methods", "zeroshot,linear_probe", "--shots", "2", "--no-report", "--cpus-per-trial", "1",
           "--results", str(tmp_path / "results")]
    ran = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    from bench.results import RunFolder

    rows = RunFolder(tmp_path / "results", "own").read()
    assert len(rows) == 6 and set(rows.status) == {"ok"} and (rows.n_test == 9).all()
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "6 already done" in again.stderr


def test_own_data_without_run_gets_a_run_named_after_it_not_the_suites(tmp_path):
    from bench.plan import default_run_name as _default_run_name
    from bench.suite import load_suite

    suite = load_suite("synthetic")
    folder = class_folders(tmp_path / "my cells")
    assert _default_run_name(suite, [str(folder)]) == "my_cells"
    assert _default_run_name(suite, ["syn_colour", str(folder)]) == "my_cells"
    assert _default_run_name(suite, ["syn_colour"]) == _default_run_name(suite, None) == "synthetic"
