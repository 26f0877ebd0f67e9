"""Real-dataset loaders on tiny fixtures in each dataset's exact CoOp layout; Dassl-identical splits; class subsets."""
from __future__ import annotations

import dataclasses
import json
import random
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from bench.data import real
from bench.data.catalog import get_dataset, load_fewshot
from bench.data.classes import relabel_to_source, shift_label_map, split_labels, subsample_classes
from bench.data.splits import DatasetSplits, Datum
from bench.data_cli import data_app
from bench.errors import BenchError

runner = CliRunner()


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (len(path.name) * 7 % 255, 90, 30)).save(path, format="JPEG")


def _json_dataset(root: Path, folder: str, image_dir: str, split_file: str, classes: list[tuple[str, str]],
                  per_split=(5, 2, 3), rel_base: str | None = None) -> Path:
    """``classes``: (relative path pattern with {split} and {i}, class name) per label. Writes images + JSON."""
    base = root / folder / (image_dir if rel_base is None else rel_base)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for part, n in zip(split, per_split):
        for label, (pattern, cname) in enumerate(classes):
            for i in range(n):
                rel = pattern.format(split=part, i=i)
                _img(base / rel)
                split[part].append([rel, label, cname])
    (root / folder / split_file).write_text(json.dumps(split))
    return root / folder


FEWSHOT11 = tuple(n for n, info in real.REAL.items() if info.role == "fewshot")

# Real folder / file names of each dataset (as in CoOp's split files).
JSON_FIXTURES = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                   [("airplanes/image_{split}{i:03d}.jpg", "airplane"), ("Faces/image_{split}{i:03d}.jpg", "face"),
                    ("crocodile_head/image_{split}{i:03d}.jpg", "crocodile_head")]),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json",
                    [("Abyssinian_{split}{i}.jpg", "abyssinian"),
                     ("american_bulldog_{split}{i}.jpg", "american_bulldog")]),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                       [("image_0{split}{i}1.jpg", "pink primrose"), ("image_0{split}{i}2.jpg", "hard-leaved pocket orchid")]),
    "food101": ("food-101", "images", "split_zhou_Food101.json",
                [("apple_pie/10{split}{i}.jpg", "apple_pie"), ("baby_back_ribs/20{split}{i}.jpg", "baby_back_ribs")]),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json",
               [("a/abbey/sun_{split}{i}.jpg", "abbey"),
                ("a/apartment_building/outdoor/sun_{split}{i}.jpg", "outdoor apartment_building")]),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json",
            [("banded/banded_{split}{i}.jpg", "banded"), ("blotchy/blotchy_{split}{i}.jpg", "blotchy")]),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json",
                [("AnnualCrop/AnnualCrop_{split}{i}.jpg", "Annual Crop Land"),
                 ("SeaLake/SeaLake_{split}{i}.jpg", "Sea or Lake")]),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
               [("Apply_Eye_Makeup/v_ApplyEyeMakeup_g{i:02d}_c0{split}.jpg", "Apply_Eye_Makeup"),
                ("Yo_Yo/v_YoYo_g{i:02d}_c0{split}.jpg", "Yo_Yo")]),
}


def _write_cars(root: Path) -> Path:
    folder = _json_dataset(root, "stanford_cars", "", "split_zhou_StanfordCars.json",
                           [("cars_{split}/0{i}1.jpg", "2012 Tesla Model S Sedan"),
                            ("cars_{split}/0{i}2.jpg", "2012 Acura TL Sedan")], rel_base="")
    for name in ("cars_val",):  # val images live in cars_train in the real split; keep the fixture honest
        for p in (folder / name).glob("*.jpg"):
            p.rename(folder / "cars_train" / p.name)
        (folder / name).rmdir()
    split = json.loads((folder / "split_zhou_StanfordCars.json").read_text())
    split["val"] = [[rel.replace("cars_val/", "cars_train/"), y, c] for rel, y, c in split["val"]]
    (folder / "split_zhou_StanfordCars.json").write_text(json.dumps(split))
    (folder / "devkit").mkdir()
    return folder


def _write_aircraft(root: Path) -> Path:
    folder = root / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "F/A-18"]
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("\n".join(variants) + "\n")
    image_id = 1000000
    for part, n in (("train", 4), ("val", 2), ("test", 3)):
        lines = []
        for v in variants:
            for _ in range(n):
                image_id += 1
                _img(folder / "images" / f"{image_id:07d}.jpg")
                lines.append(f"{image_id:07d} {v}")
        (folder / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    return folder


IMAGENET_CLASSES = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark",
                    "n01491361": "tiger shark"}


def _write_imagenet(root: Path, n_train=7, n_val=2) -> Path:
    folder = root / "imagenet"
    folder.mkdir(parents=True)
    # classnames.txt lists all classes; train folders are read sorted, whatever the file order.
    (folder / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in IMAGENET_CLASSES.items()))
    k = 0
    for wnid in reversed(IMAGENET_CLASSES):
        for i in range(n_train):
            _img(folder / "images" / "train" / wnid / f"{wnid}_{1000 - i}.JPEG")
        for i in range(n_val):
            k += 1
            _img(folder / "images" / "val" / wnid / f"ILSVRC2012_val_{k:08d}.JPEG")
    return folder


def _write_wnid_variant(root: Path, folder: str, image_dir: str, wnids: list[str], copy_classnames=True) -> Path:
    f = root / folder
    for w in wnids:
        for i in range(2):
            _img(f / image_dir / w / f"{w}_{i}.jpg")
    (f / image_dir / "README.txt").write_text("not a class\n")
    if copy_classnames:
        (f / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in IMAGENET_CLASSES.items()))
    return f


def _write_v2(root: Path) -> Path:
    f = root / "imagenetv2"
    for label in range(len(IMAGENET_CLASSES)):
        for i in range(3):
            _img(f / "imagenetv2-matched-frequency-format-val" / str(label) / f"{i}abc.jpeg")
    (f / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in IMAGENET_CLASSES.items()))
    return f


# -- loaders -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(JSON_FIXTURES))
def test_json_dataset_loaders_read_coop_layout(tmp_path, name):
    folder, image_dir, split_file, classes = JSON_FIXTURES[name]
    _json_dataset(tmp_path, folder, image_dir, split_file, classes)
    data = get_dataset(name).read(tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (5 * len(classes), 2 * len(classes), 3 * len(classes))
    assert data.classnames == [c for _, c in classes]
    assert all(Path(d.path).is_file() for d in (*data.train, *data.val, *data.test))
    assert all(str(tmp_path / folder / image_dir) in d.path for d in data.train)
    info = real.REAL[name]
    if info.classname_rule:  # the fixture follows CoOp's naming, so the rule reproduces the JSON's names
        base = tmp_path / folder / image_dir
        assert all(info.classname_rule(str(Path(d.path).relative_to(base))) == d.classname for d in data.train)


def test_prompt_templates_and_folders_follow_coop():
    expect = {
        "imagenet": ("imagenet", "a photo of a {}."), "caltech101": ("caltech-101", "a photo of a {}."),
        "oxford_pets": ("oxford_pets", "a photo of a {}, a type of pet."),
        "stanford_cars": ("stanford_cars", "a photo of a {}."),
        "oxford_flowers": ("oxford_flowers", "a photo of a {}, a type of flower."),
        "food101": ("food-101", "a photo of {}, a type of food."),
        "fgvc_aircraft": ("fgvc_aircraft", "a photo of a {}, a type of aircraft."),
        "sun397": ("sun397", "a photo of a {}."), "dtd": ("dtd", "{} texture."),
        "eurosat": ("eurosat", "a centered satellite photo of {}."),
        "ucf101": ("ucf101", "a photo of a person doing {}."),
        "imagenet_v2": ("imagenetv2", "a photo of a {}."), "imagenet_sketch": ("imagenet-sketch", "a photo of a {}."),
        "imagenet_a": ("imagenet-adversarial", "a photo of a {}."),
        "imagenet_r": ("imagenet-rendition", "a photo of a {}."),
    }
    for name, (folder, template) in expect.items():
        ds = get_dataset(name)
        assert (ds.folder, ds.template) == (folder, template), name
    assert get_dataset("stanford_cars").paths_relative_to_folder
    assert len(FEWSHOT11) == 11 and len(real.SHIFT_TARGETS) == 4


def test_stanford_cars_paths_are_relative_to_the_dataset_folder(tmp_path):
    _write_cars(tmp_path)
    data = get_dataset("stanford_cars").read(tmp_path)
    assert data.classnames == ["2012 Tesla Model S Sedan", "2012 Acura TL Sedan"]
    assert Path(data.train[0].path).parent == tmp_path / "stanford_cars" / "cars_train"
    assert Path(data.test[0].path).parent == tmp_path / "stanford_cars" / "cars_test"
    assert all(Path(d.path).is_file() for d in (*data.train, *data.val, *data.test))


def test_fgvc_aircraft_reads_variant_files(tmp_path):
    _write_aircraft(tmp_path)
    data = get_dataset("fgvc_aircraft").read(tmp_path)
    assert data.classnames == ["707-320", "A300B4", "F/A-18"]
    assert (len(data.train), len(data.val), len(data.test)) == (12, 6, 9)
    assert [d.label for d in data.train[:5]] == [0, 0, 0, 0, 1]
    assert data.train[0].path == str(tmp_path / "fgvc_aircraft" / "images" / "1000001.jpg")


def test_imagenet_labels_sorted_wnids_and_val_is_not_test(tmp_path):
    _write_imagenet(tmp_path)
    data = get_dataset("imagenet").read(tmp_path)
    assert data.classnames == ["tench", "goldfish", "great white shark", "tiger shark"]  # sorted wnids
    assert len(data.train) == 28 and len(data.test) == 8
    assert Path(data.train[0].path).parent.name == "n01440764" and data.train[0].label == 0
    assert [Path(d.path).name for d in data.train[:2]] == ["n01440764_1000.JPEG", "n01440764_994.JPEG"]  # name order
    test_paths = {d.path for d in data.test}
    for shots in (1, 2, 4, 8):
        for seed in (1, 2, 3):
            fs, short = load_fewshot("imagenet", tmp_path, shots, seed)
            train_paths = {d.path for d in fs.train}
            val_paths = {d.path for d in fs.val}
            assert not (train_paths & val_paths) and not (val_paths & test_paths)
            # train picks are Dassl's over the train list, untouched by the val choice
            assert [d.path for d in fs.train] == [d.path for d in _dassl(data.train, data.train, shots, seed)[0]]
            per_class = defaultdict(int)
            for d in fs.val:
                per_class[d.label] += 1
            left = 7 - min(shots, 7)  # train images not picked, per class
            assert [per_class[y] for y in range(4)] == [min(min(shots, 4), left)] * 4
            assert all("/images/train/" in p for p in val_paths)
    assert load_fewshot("imagenet", tmp_path, 8, 1)[1] == [0, 1, 2, 3]  # 7 < 8 images: all taken


def test_imagenet_variants(tmp_path):
    wnids = ["n01443537", "n01491361"]
    _write_wnid_variant(tmp_path, "imagenet-adversarial", "imagenet-a", wnids)
    _write_wnid_variant(tmp_path, "imagenet-rendition", "imagenet-r", wnids)
    _write_wnid_variant(tmp_path, "imagenet-sketch", "images", list(IMAGENET_CLASSES))
    _write_v2(tmp_path)
    a = get_dataset("imagenet_a").read(tmp_path)
    assert a.classnames == ["goldfish", "tiger shark"] and len(a.test) == 4 and not a.val
    r = get_dataset("imagenet_r").read(tmp_path)
    assert [d.label for d in r.test] == [0, 0, 1, 1]
    s = get_dataset("imagenet_sketch").read(tmp_path)
    assert s.classnames == list(IMAGENET_CLASSES.values())
    v2 = get_dataset("imagenet_v2").read(tmp_path)
    assert v2.classnames == list(IMAGENET_CLASSES.values()) and len(v2.test) == 12


def test_variant_falls_back_to_imagenet_classnames(tmp_path):
    _write_imagenet(tmp_path)
    _write_wnid_variant(tmp_path, "imagenet-adversarial", "imagenet-a", ["n01484850"], copy_classnames=False)
    assert get_dataset("imagenet_a").read(tmp_path).classnames == ["great white shark"]


def test_classname_rules():
    assert real.caltech_classname("Leopards/image_0001.jpg") == "leopard"
    assert real.caltech_classname("crocodile_head/image_0001.jpg") == "crocodile_head"
    assert real.pets_classname("american_pit_bull_terrier_103.jpg") == "american_pit_bull_terrier"
    assert real.eurosat_classname("HerbaceousVegetation/x.jpg") == "Herbaceous Vegetation Land"
    assert len(real.EUROSAT_NAMES) == 10


# -- Dassl sampling ----------------------------------------------------------------------------------

def _dassl(train, val, k, seed):
    """Dassl's generate_fewshot_dataset as CoOp calls it, on the global ``random`` module."""
    random.seed(seed)

    def gen(items, n):
        tracker = defaultdict(list)
        for item in items:
            tracker[item.label].append(item)
        out = []
        for _, group in tracker.items():
            out.extend(random.sample(group, n) if len(group) >= n else group)
        return out

    return gen(train, k), gen(val, min(k, 4))


def _shuffled_fixture(root: Path) -> Path:
    """A DTD-layout dataset whose split lists are not sorted by label and whose classes differ in size."""
    folder = root / "dtd"
    rng = random.Random(123)
    split = {}
    for part, sizes in (("train", [9, 3, 17, 6]), ("val", [5, 2, 4, 6]), ("test", [1, 1, 1, 1])):
        rows = []
        for label, (cname, n) in enumerate(zip(["banded", "blotchy", "braided", "bubbly"], sizes)):
            for i in range(n):
                rel = f"{cname}/{cname}_{part}_{i:04d}.jpg"
                _img(folder / "images" / rel)
                rows.append([rel, label, cname])
        rng.shuffle(rows)
        split[part] = rows
    (folder / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    return folder


@pytest.fixture(scope="module")
def shuffled_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dassl")
    _shuffled_fixture(root)
    return root


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
def test_bench_data_split_matches_dassl(shuffled_root, tmp_path, shots, seed):
    out = tmp_path / "split.json"
    res = runner.invoke(data_app, ["split", "--dataset", "dtd", "--shots", str(shots), "--seed", str(seed),
                                   "--data-root", str(shuffled_root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    split = json.loads((shuffled_root / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    as_datum = {part: [Datum(rel, y, c) for rel, y, c in split[part]] for part in ("train", "val")}
    want_train, want_val = _dassl(as_datum["train"], as_datum["val"], shots, seed)
    assert got["train"] == [[d.path, d.label, d.classname] for d in want_train]
    assert got["val"] == [[d.path, d.label, d.classname] for d in want_val]
    assert got["classes_with_fewer_than_shots"] == sorted(y for y, n in enumerate([9, 3, 17, 6]) if n < shots)


def test_bench_data_split_prints_json(shuffled_root):
    res = runner.invoke(data_app, ["split", "--dataset", "dtd", "--shots", "2", "--seed", "1",
                                   "--data-root", str(shuffled_root)])
    assert res.exit_code == 0
    got = json.loads(res.output)
    assert len(got["train"]) == 8 and len(got["val"]) == 8 and got["train"][0][0].endswith(".jpg")


# -- missing or broken data --------------------------------------------------------------------------

def _raises_bench_error(args) -> str:
    res = runner.invoke(data_app, args)
    assert isinstance(res.exception, BenchError), res.output
    msg = str(res.exception)
    assert "\n" not in msg
    return msg


def test_missing_dataset_folder(tmp_path):
    msg = _raises_bench_error(["split", "--dataset", "caltech101", "--shots", "1", "--seed", "1",
                               "--data-root", str(tmp_path)])
    assert "caltech-101" in msg and "bench data check" in msg


def test_missing_split_file(tmp_path):
    (tmp_path / "eurosat" / "2750").mkdir(parents=True)
    msg = _raises_bench_error(["split", "--dataset", "eurosat", "--shots", "1", "--seed", "1",
                               "--data-root", str(tmp_path)])
    assert "split_zhou_EuroSAT.json" in msg


@pytest.mark.parametrize("text", ["{not json", '{"train": []}', '{"train": [[1]], "val": [], "test": []}'])
def test_invalid_split_json(tmp_path, text):
    (tmp_path / "oxford_pets" / "images").mkdir(parents=True)
    (tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").write_text(text)
    with pytest.raises(BenchError, match="not a valid CoOp split"):
        get_dataset("oxford_pets").read(tmp_path)


def test_imagenet_errors(tmp_path):
    with pytest.raises(BenchError, match="classnames.txt"):
        (tmp_path / "imagenet").mkdir()
        get_dataset("imagenet").read(tmp_path)
    _write_imagenet(tmp_path / "b")
    val = tmp_path / "b" / "imagenet" / "images" / "val"
    for sub in list(val.iterdir()):
        for f in sub.iterdir():
            f.rename(val / f.name)
        sub.rmdir()
    with pytest.raises(BenchError, match="class folders"):
        get_dataset("imagenet").read(tmp_path / "b")


def test_aircraft_unknown_variant(tmp_path):
    folder = _write_aircraft(tmp_path)
    (folder / "images_variant_test.txt").write_text("1234567 Concorde\n")
    with pytest.raises(BenchError, match="Concorde"):
        get_dataset("fgvc_aircraft").read(tmp_path)


def test_user_mistakes_on_the_command_line(tmp_path, shuffled_root):
    _raises_bench_error(["split", "--dataset", "dtdd", "--shots", "1", "--seed", "1"])
    _raises_bench_error(["split", "--dataset", "dtd", "--shots", "0", "--seed", "1", "--data-root", str(shuffled_root)])
    _raises_bench_error(["split", "--dataset", "dtd", "--shots", "1", "--seed", "1", "--data-root",
                         str(shuffled_root), "--out", str(tmp_path)])
    _raises_bench_error(["check", "--data-root", str(tmp_path / "nope")])


# -- bench data check --------------------------------------------------------------------------------

def test_check_reports_found_missing_and_lost_files(tmp_path):
    folder, image_dir, split_file, classes = JSON_FIXTURES["food101"]
    _json_dataset(tmp_path, folder, image_dir, split_file, classes)
    (tmp_path / folder / image_dir / classes[0][0].format(split="test", i=0)).unlink()
    res = real.check_dataset("food101", tmp_path)
    assert res.status == "incomplete" and res.missing_files == 1
    assert res.counts == {"train": 10, "val": 4, "test": 6} and res.expected["train"] == 50500
    assert real.check_dataset("dtd", tmp_path).status == "missing"
    out = runner.invoke(data_app, ["check", "--data-root", str(tmp_path)], terminal_width=200)
    assert out.exit_code == 0, out.output
    line = next(ln for ln in out.output.splitlines() if ln.strip().startswith("food101 "))
    assert "incomplete" in line and "10/50500" in line
    assert "dtd/images/<texture>/*.jpg" in out.output  # what to put where


def test_check_ok_when_counts_match(tmp_path, monkeypatch):
    folder, image_dir, split_file, classes = JSON_FIXTURES["eurosat"]
    _json_dataset(tmp_path, folder, image_dir, split_file, classes)
    info = real.REAL["eurosat"]
    monkeypatch.setitem(real.REAL, "eurosat", real.RealInfo(**{**info.__dict__, "classes": 2,
                                                              "counts": {"train": 10, "val": 4, "test": 6}}))
    assert real.check_dataset("eurosat", tmp_path).status == "ok"


def test_check_flags_a_split_file_of_another_dataset(tmp_path):
    _json_dataset(tmp_path, "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                  [("airplanes/x_{split}{i}.jpg", "airplanes")])  # CoOp renames it to "airplane"
    res = real.check_dataset("caltech101", tmp_path)
    assert res.status == "mismatch" and "naming" in res.message


def test_check_suite_lists_its_datasets(tmp_path):
    out = runner.invoke(data_app, ["check", "--suite", "imagenet_shift", "--data-root", str(tmp_path)],
                        terminal_width=200)
    assert out.exit_code == 0, out.output
    names = [ln.split()[0] for ln in out.output.splitlines() if ln.strip().startswith("imagenet")]
    assert names[:5] == ["imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]


def test_synth_calls_materialize_all(tmp_path, monkeypatch):
    import bench.data.synthetic as synthetic

    seen = []
    monkeypatch.setattr(synthetic, "materialize_all", lambda out: seen.append(out) or [out / "a"])
    res = runner.invoke(data_app, ["synth", "--out", str(tmp_path / "syn")])
    assert res.exit_code == 0, res.output
    assert seen == [tmp_path / "syn"]


# -- class subsets -----------------------------------------------------------------------------------

def _splits(n_classes: int) -> DatasetSplits:
    def items(part, n):
        return [Datum(f"/d/{part}/{y}_{i}.jpg", y, f"c{y}") for i in range(n) for y in range(n_classes)]

    return DatasetSplits("toy", items("train", 2), items("val", 1), items("test", 3),
                         [f"c{y}" for y in range(n_classes)], "a photo of a {}.")


def test_subsample_classes_base_and_new():
    s = _splits(5)
    base, new = subsample_classes(s, "base"), subsample_classes(s, "new")
    assert base.classnames == ["c0", "c1", "c2"] and new.classnames == ["c3", "c4"]  # ceil(5/2) = 3 base
    assert sorted({d.label for d in base.test}) == [0, 1, 2] and sorted({d.label for d in new.test}) == [0, 1]
    assert all(d.classname == f"c{d.label + 3}" for d in (*new.train, *new.val, *new.test))
    assert len(base.train) == 6 and len(new.val) == 2 and len(new.test) == 6
    assert subsample_classes(s, "all") is s
    assert split_labels([4, 0, 2, 1], "base") == [0, 1] and split_labels(range(100), "new") == list(range(50, 100))
    with pytest.raises(BenchError):
        subsample_classes(s, "old")


def test_subsample_after_fewshot_matches_coop_order(shuffled_root):
    fs, _ = load_fewshot("dtd", shuffled_root, 2, 1)
    new = subsample_classes(fs, "new")
    assert new.classnames == ["braided", "bubbly"]
    assert [d.path for d in new.train] == [d.path for d in fs.train if d.label >= 2]


def test_shift_label_maps(tmp_path):
    _write_imagenet(tmp_path)
    _write_wnid_variant(tmp_path, "imagenet-adversarial", "imagenet-a", ["n01443537", "n01491361"])
    _write_v2(tmp_path)
    inet = get_dataset("imagenet").read(tmp_path)
    a = get_dataset("imagenet_a").read(tmp_path)
    m = shift_label_map(inet, a)
    assert m.matched_by == "wnid" and m.source_labels == (1, 3)
    import torch

    logits = torch.tensor([[0.0, 5.0, 9.0, 1.0], [0.0, 1.0, 9.0, 3.0]])
    assert m.select(logits).argmax(-1).tolist() == [0, 1]  # class 2 (not in -A) is ignored
    moved = relabel_to_source(a, m, inet)
    assert {d.label for d in moved.test} == {1, 3} and moved.classnames == inet.classnames
    v2 = get_dataset("imagenet_v2").read(tmp_path)
    m2 = shift_label_map(inet, v2)
    assert m2.matched_by == "name" and m2.source_labels == (0, 1, 2, 3)


def test_shift_label_map_unknown_class():
    src = _splits(3)
    tgt = dataclasses.replace(_splits(2), classnames=["c1", "zebra"])
    with pytest.raises(BenchError, match="zebra"):
        shift_label_map(src, tgt)


# -- suites ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fewshot11", "base2new", "imagenet_shift"])
def test_real_suites_load(name):
    from bench.suite import load_suite

    s = load_suite(name)
    assert s.name == name and s.model == "ViT-B-16" and s.pretrained == "openai" and s.seeds == [1, 2, 3]
    for ds in [*s.datasets, *s.shift_targets]:
        get_dataset(ds)
    if name == "fewshot11":
        assert s.datasets == list(FEWSHOT11) and s.shots == [1, 2, 4, 8, 16]
        assert {"zeroshot", "mask", "coop+mask", "tip_adapter_f+mask"} <= set(s.methods)
    if name == "base2new":
        assert s.protocol == "base2new" and s.shots == [16]
    if name == "imagenet_shift":
        assert s.protocol == "shift" and s.shift_targets == list(real.SHIFT_TARGETS)


def test_check_imagenet_and_variants(tmp_path):
    _write_imagenet(tmp_path)
    _write_wnid_variant(tmp_path, "imagenet-adversarial", "imagenet-a", ["n01443537", "n01491361"])
    res = real.check_dataset("imagenet", tmp_path)
    assert res.status == "mismatch" and res.counts == {"train": 28, "test": 8} and res.classes == 4
    a = real.check_dataset("imagenet_a", tmp_path)
    assert a.counts == {"test": 4} and a.classes == 2 and "expected 200" in a.message
    out = runner.invoke(data_app, ["check", "--data-root", str(tmp_path)], terminal_width=200)
    line = next(ln for ln in out.output.splitlines() if ln.strip().startswith("imagenet "))
    assert "= train" in line


def test_bench_cli_mounts_data_commands(tmp_path, capsys):
    from bench.cli import main

    assert main(["data", "split", "--dataset", "caltech101", "--shots", "1", "--seed", "1",
                 "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "caltech-101" in err and "Traceback" not in err
