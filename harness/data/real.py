"""The real benchmark datasets in CoOp's on-disk layout (see docs/datasets.md for what goes where).

Eleven few-shot datasets and four ImageNet variants for the domain-shift suite. Every folder name, split
source, class-name rule and prompt template follows CoOp (``DATASETS.md``, ``datasets/*.py``):

* nine datasets read CoOp's ``split_zhou_*.json`` (the released split files are the protocol: their
  train/val/test lists, labels and class names are taken as they are);
* FGVCAircraft reads the official ``variants.txt`` + ``images_variant_{train,val,test}.txt``;
* ImageNet reads its class folders and ``classnames.txt``;
* ImageNet-V2/-Sketch/-A/-R are test-only folders of class sub-folders.

**ImageNet's validation split.** CoOp has none (its val = test = the 50k official val images), and bench
never selects anything on the test split. ImageNet's ``val`` list is therefore the *train* image list,
and the few-shot sampler (:func:`bench.data.fewshot.fewshot_split`) never puts an image that it already
picked for the K-shot train set into the few-shot val set. So the K-shot train picks are exactly Dassl's
(the RNG draws them first, from the same list), and the few-shot val is ``min(K, 4)`` further train-folder
images per class, disjoint from the train picks and from the 50k test images.

**Image order inside ImageNet class folders** is sorted by file name. CoOp uses ``os.listdir`` order,
which depends on the file system, so CoOp's own ImageNet subsets are not reproducible across machines
(KaiyangZhou/CoOp#88); sorting makes bench's reproducible everywhere.

Missing data raises :class:`~bench.errors.BenchError` with one line naming the fix.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

from ..errors import BenchError
from .classes import read_classnames
from .dataset import DatasetCheck, DatasetDef
from .splits import Datum

DOCS = "docs/datasets.md"


# -- what each dataset should look like --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RealInfo:
    """Facts about a real dataset that `bench data check` and the docs use."""

    name: str
    dassl_name: str  # the class name in CoOp / Dassl
    classes: int
    counts: dict[str, int]  # expected images per split (CoOp's table); missing key: not checked
    layout: str  # one line: what to put where under the data root
    sources: tuple[str, ...]  # public downloads
    required: tuple[str, ...] = ()  # paths inside the dataset folder that must exist
    classname_rule: Callable[[str], str] | None = None  # relative image path -> class name (JSON check)
    role: str = "fewshot"  # "fewshot" | "shift"


REAL: dict[str, RealInfo] = {}

SPLIT_FILES_SOURCE = "split_zhou_*.json: Google-Drive links in KaiyangZhou/CoOp DATASETS.md"


# -- class-name rules (CoOp's; the split files already hold the results) -----------------------------

_CALTECH_RENAME = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}

EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}


def caltech_classname(rel: str) -> str:
    folder = Path(rel).parts[0]
    return _CALTECH_RENAME.get(folder, folder)


def pets_classname(rel: str) -> str:
    """``Abyssinian_100.jpg`` -> ``abyssinian`` (breed = file name minus the trailing ``_<id>``)."""
    stem = Path(rel).stem
    return "_".join(stem.split("_")[:-1]).lower()


def folder_classname(rel: str) -> str:
    return Path(rel).parts[0]


def eurosat_classname(rel: str) -> str:
    folder = Path(rel).parts[0]
    return EUROSAT_NAMES.get(folder, folder)


def sun397_classname(rel: str) -> str:
    """``a/apartment_building/outdoor/sun_x.jpg`` -> ``outdoor apartment_building``."""
    parts = Path(rel).parts[1:-1]  # drop the letter level and the file name
    return " ".join(reversed(parts))


# -- readers -----------------------------------------------------------------------------------------

def _files(folder: Path) -> list[str]:
    """Non-hidden file names in a folder, sorted (Dassl's listdir_nohidden, made deterministic)."""
    return sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_file())


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir())


def _need_dir(path: Path, what: str, name: str) -> Path:
    if not path.is_dir():
        raise BenchError(f"dataset '{name}': {what} {path} is missing; see {DOCS} (`bench data check`)")
    return path


def _need_file(path: Path, what: str, name: str) -> Path:
    if not path.is_file():
        raise BenchError(f"dataset '{name}': {what} {path} is missing; see {DOCS} (`bench data check`)")
    return path


def read_imagenet_classnames(path: Path, name: str = "imagenet") -> dict[str, str]:
    """``classnames.txt``: lines ``<wnid> <class name with spaces>`` -> {wnid: name}, file order."""
    _need_file(path, "class-name file", name)
    out = read_classnames(path, "wnid", "use CoOp's classnames.txt")
    if not out:
        raise BenchError(f"{path} is empty; use CoOp's classnames.txt (1000 lines '<wnid> <class name>')")
    return out


def _read_class_folders(split_dir: Path, labels: dict[str, int], names: dict[str, str], ds: str,
                        what: str) -> list[Datum]:
    items: list[Datum] = []
    for wnid in sorted(labels, key=labels.get):
        sub = split_dir / wnid
        if not sub.is_dir():
            continue
        for f in _files(sub):
            items.append(Datum(str(sub / f), labels[wnid], names[wnid]))
    if not items:
        raise BenchError(f"dataset '{ds}': no images found in the class folders of {split_dir} ({what}); "
                         f"see {DOCS}")
    return items


def _read_imagenet(ds: DatasetDef, folder: Path) -> dict[str, list[Datum]]:
    names = read_imagenet_classnames(folder / "classnames.txt", ds.name)
    images = _need_dir(folder / ds.image_dir, "image folder", ds.name)
    train_dir = _need_dir(images / "train", "train folder", ds.name)
    val_dir = _need_dir(images / "val", "val folder (the official 50k val images, used as test)", ds.name)
    wnids = _subfolders(train_dir)
    if not wnids:
        raise BenchError(f"dataset '{ds.name}': {train_dir} has no class folders (n01440764, ...); see {DOCS}")
    unnamed = [w for w in wnids if w not in names]
    if unnamed:
        raise BenchError(f"dataset '{ds.name}': {len(unnamed)} train folders (e.g. {unnamed[0]}) are not in "
                         f"{folder / 'classnames.txt'}; use CoOp's classnames.txt")
    labels = {w: i for i, w in enumerate(wnids)}  # label = index of the wnid in the sorted train folders
    val_wnids = _subfolders(val_dir)
    if not val_wnids and any(True for _ in os.scandir(val_dir)):
        raise BenchError(f"dataset '{ds.name}': {val_dir} holds loose images; sort them into the 1000 class "
                         f"folders (e.g. with the widely used valprep.sh) as CoOp requires")
    stray = [w for w in val_wnids if w not in labels]
    if stray:
        raise BenchError(f"dataset '{ds.name}': val folder {stray[0]} has no train folder; "
                         f"train and val must hold the same class folders")
    train = _read_class_folders(train_dir, labels, names, ds.name, "train")
    test = _read_class_folders(val_dir, labels, names, ds.name, "val")
    # val = the train list: the sampler draws the few-shot val from train images it did not pick for train.
    return {"train": train, "val": train, "test": test}


def _read_aircraft(ds: DatasetDef, folder: Path) -> dict[str, list[Datum]]:
    variants_file = _need_file(folder / "variants.txt", "class list", ds.name)
    classnames = [line.strip() for line in variants_file.read_text().splitlines() if line.strip()]
    label_of = {c: i for i, c in enumerate(classnames)}
    image_dir = folder / ds.image_dir
    out: dict[str, list[Datum]] = {}
    for split in ("train", "val", "test"):
        path = _need_file(folder / f"images_variant_{split}.txt", "split file", ds.name)
        items = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in label_of:
                raise BenchError(f"{path} line {i}: variant '{variant}' is not in variants.txt; "
                                 "use the files of fgvc-aircraft-2013b/data unchanged")
            items.append(Datum(str(image_dir / f"{image_id}.jpg"), label_of[variant], variant))
        out[split] = items
    return out


def _variant_classnames(ds: DatasetDef, folder: Path) -> dict[str, str]:
    """The variant's own classnames.txt (CoOp copies ImageNet's there), else the one in imagenet/."""
    own = folder / "classnames.txt"
    shared = folder.parent / "imagenet" / "classnames.txt"
    if not own.is_file() and shared.is_file():
        return read_imagenet_classnames(shared, ds.name)
    if not own.is_file():
        raise BenchError(f"dataset '{ds.name}': {own} is missing; copy imagenet/classnames.txt there")
    return read_imagenet_classnames(own, ds.name)


def _read_wnid_variant(ds: DatasetDef, folder: Path) -> dict[str, list[Datum]]:
    """ImageNet-Sketch/-A/-R: one folder per wnid; label = index in the sorted folders (CoOp)."""
    names = _variant_classnames(ds, folder)
    image_dir = _need_dir(folder / ds.image_dir, "image folder", ds.name)
    wnids = _subfolders(image_dir)  # README.txt of -A/-R is a file, so it is not a class
    if not wnids:
        raise BenchError(f"dataset '{ds.name}': {image_dir} has no class folders (n01440764, ...); see {DOCS}")
    unnamed = [w for w in wnids if w not in names]
    if unnamed:
        raise BenchError(f"dataset '{ds.name}': class folder {unnamed[0]} is not in classnames.txt; "
                         "copy CoOp's imagenet/classnames.txt into the dataset folder")
    items = _read_class_folders(image_dir, {w: i for i, w in enumerate(wnids)}, names, ds.name, "test")
    return {"train": items, "val": [], "test": items}


def _read_imagenet_v2(ds: DatasetDef, folder: Path) -> dict[str, list[Datum]]:
    """ImageNet-V2: folders ``0`` .. ``999``, folder number = line index in classnames.txt (CoOp)."""
    names = list(_variant_classnames(ds, folder).values())
    image_dir = _need_dir(folder / ds.image_dir, "image folder", ds.name)
    items: list[Datum] = []
    for label, cname in enumerate(names):
        sub = image_dir / str(label)
        if sub.is_dir():
            items.extend(Datum(str(sub / f), label, cname) for f in _files(sub))
    if not items:
        raise BenchError(f"dataset '{ds.name}': no images in {image_dir}/0 .. /{len(names) - 1}; see {DOCS}")
    return {"train": items, "val": [], "test": items}


# -- the table ---------------------------------------------------------------------------------------

class RealDataset(DatasetDef):
    """A real benchmark dataset: checked against CoOp's split sizes and naming by `bench data check`."""

    def check(self, data_root: Path | None, check_files: bool = True) -> DatasetCheck:
        return check_dataset(self.name, data_root, check_files)


DATASETS: list[RealDataset] = []  # the `bench.datasets` entry point "real"


def _real(ds: RealDataset, info: RealInfo) -> None:
    DATASETS.append(ds)
    REAL[ds.name] = info


_SPLITS = SPLIT_FILES_SOURCE

_real(
    RealDataset("imagenet", "ImageNet-1k (1000 classes; test = the official 50k val images)", "imagenet",
               "images", "a photo of a {}.", reader=_read_imagenet),
    RealInfo("imagenet", "ImageNet", 1000, {"train": 1281167, "test": 50000},
             "imagenet/images/train/<wnid>/*.JPEG, imagenet/images/val/<wnid>/*.JPEG (val sorted into the 1000 "
             "class folders), imagenet/classnames.txt",
             ("https://image-net.org (ILSVRC2012 train + val)",
              "classnames.txt: Google-Drive link in KaiyangZhou/CoOp DATASETS.md (names from OpenAI CLIP)"),
             required=("classnames.txt", "images/train", "images/val")),
)
_real(
    RealDataset("caltech101", "Caltech101 (100 object classes)", "caltech-101", "101_ObjectCategories",
               "a photo of a {}.", split_file="split_zhou_Caltech101.json"),
    RealInfo("caltech101", "Caltech101", 100, {"train": 4128, "val": 1649, "test": 2465},
             "caltech-101/101_ObjectCategories/<class>/*.jpg, caltech-101/split_zhou_Caltech101.json",
             ("https://data.caltech.edu, Caltech 101 (101_ObjectCategories.tar.gz; formerly on vision.caltech.edu)", _SPLITS),
             required=("101_ObjectCategories", "split_zhou_Caltech101.json"), classname_rule=caltech_classname),
)
_real(
    RealDataset("oxford_pets", "Oxford-IIIT Pets (37 breeds)", "oxford_pets", "images",
               "a photo of a {}, a type of pet.", split_file="split_zhou_OxfordPets.json"),
    RealInfo("oxford_pets", "OxfordPets", 37, {"train": 2944, "val": 736, "test": 3669},
             "oxford_pets/images/*.jpg, oxford_pets/annotations/, oxford_pets/split_zhou_OxfordPets.json",
             ("https://www.robots.ox.ac.uk/~vgg/data/pets/ (images.tar.gz, annotations.tar.gz)", _SPLITS),
             required=("images", "split_zhou_OxfordPets.json"), classname_rule=pets_classname),
)
_real(
    RealDataset("stanford_cars", "Stanford Cars (196 models)", "stanford_cars", "",
               "a photo of a {}.", split_file="split_zhou_StanfordCars.json", paths_relative_to_folder=True),
    RealInfo("stanford_cars", "StanfordCars", 196, {"train": 6509, "val": 1635, "test": 8041},
             "stanford_cars/cars_train/*.jpg, stanford_cars/cars_test/*.jpg, stanford_cars/devkit/, "
             "stanford_cars/cars_test_annos_withlabels.mat, stanford_cars/split_zhou_StanfordCars.json",
             ("original Stanford links are offline since 2023: use the Kaggle mirror "
              "(see KaiyangZhou/CoOp#61, pytorch/vision#7545)", _SPLITS),
             required=("cars_train", "cars_test", "split_zhou_StanfordCars.json")),
)
_real(
    RealDataset("oxford_flowers", "Oxford Flowers102 (102 species)", "oxford_flowers", "jpg",
               "a photo of a {}, a type of flower.", split_file="split_zhou_OxfordFlowers.json"),
    RealInfo("oxford_flowers", "OxfordFlowers", 102, {"train": 4093, "val": 1633, "test": 2463},
             "oxford_flowers/jpg/image_*.jpg, oxford_flowers/imagelabels.mat, oxford_flowers/cat_to_name.json, "
             "oxford_flowers/split_zhou_OxfordFlowers.json",
             ("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (102flowers.tgz, imagelabels.mat)",
              "cat_to_name.json: Google-Drive link in KaiyangZhou/CoOp DATASETS.md", _SPLITS),
             required=("jpg", "split_zhou_OxfordFlowers.json")),
)
_real(
    RealDataset("food101", "Food-101 (101 dishes)", "food-101", "images",
               "a photo of {}, a type of food.", split_file="split_zhou_Food101.json"),
    RealInfo("food101", "Food101", 101, {"train": 50500, "val": 20200, "test": 30300},
             "food-101/images/<class>/*.jpg, food-101/meta/, food-101/split_zhou_Food101.json",
             ("https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/ (food-101.tar.gz)", _SPLITS),
             required=("images", "split_zhou_Food101.json"), classname_rule=folder_classname),
)
_real(
    RealDataset("fgvc_aircraft", "FGVC-Aircraft 2013b (100 variants; official splits)", "fgvc_aircraft", "images",
               "a photo of a {}, a type of aircraft.", reader=_read_aircraft),
    RealInfo("fgvc_aircraft", "FGVCAircraft", 100, {"train": 3334, "val": 3333, "test": 3333},
             "fgvc_aircraft/ = the data/ folder of fgvc-aircraft-2013b renamed: images/*.jpg, variants.txt, "
             "images_variant_{train,val,test}.txt",
             ("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (fgvc-aircraft-2013b.tar.gz, keep data/)",),
             required=("images", "variants.txt", "images_variant_train.txt", "images_variant_val.txt",
                       "images_variant_test.txt")),
)
_real(
    RealDataset("sun397", "SUN397 (397 scene categories)", "sun397", "SUN397", "a photo of a {}.",
               split_file="split_zhou_SUN397.json"),
    RealInfo("sun397", "SUN397", 397, {"train": 15880, "val": 3970, "test": 19850},
             "sun397/SUN397/<letter>/<category>/.../*.jpg, sun397/ClassName.txt (Partitions.zip), "
             "sun397/split_zhou_SUN397.json",
             ("https://vision.princeton.edu/projects/2010/SUN/ (SUN397.tar.gz, Partitions.zip)", _SPLITS),
             required=("SUN397", "split_zhou_SUN397.json"), classname_rule=sun397_classname),
)
_real(
    RealDataset("dtd", "Describable Textures (47 textures)", "dtd", "images", "{} texture.",
               split_file="split_zhou_DescribableTextures.json"),
    RealInfo("dtd", "DescribableTextures", 47, {"train": 2820, "val": 1128, "test": 1692},
             "dtd/images/<texture>/*.jpg, dtd/imdb/, dtd/labels/, dtd/split_zhou_DescribableTextures.json",
             ("https://www.robots.ox.ac.uk/~vgg/data/dtd/ (dtd-r1.0.1.tar.gz)", _SPLITS),
             required=("images", "split_zhou_DescribableTextures.json"), classname_rule=folder_classname),
)
_real(
    RealDataset("eurosat", "EuroSAT RGB (10 land-use classes)", "eurosat", "2750",
               "a centered satellite photo of {}.", split_file="split_zhou_EuroSAT.json"),
    RealInfo("eurosat", "EuroSAT", 10, {"train": 13500, "val": 5400, "test": 8100},
             "eurosat/2750/<Class>/*.jpg, eurosat/split_zhou_EuroSAT.json",
             ("EuroSAT RGB on Zenodo (the madm.dfki.de link is flaky, phelber/EuroSAT#13); "
              "its image folder must be named 2750", _SPLITS),
             required=("2750", "split_zhou_EuroSAT.json"), classname_rule=eurosat_classname),
)
_real(
    RealDataset("ucf101", "UCF101 middle frames (101 actions)", "ucf101", "UCF-101-midframes",
               "a photo of a person doing {}.", split_file="split_zhou_UCF101.json"),
    RealInfo("ucf101", "UCF101", 101, {"train": 7639, "val": 1898, "test": 3783},
             "ucf101/UCF-101-midframes/<Action_Name>/*.jpg, ucf101/split_zhou_UCF101.json",
             ("UCF-101-midframes.zip: Google-Drive link in KaiyangZhou/CoOp DATASETS.md", _SPLITS),
             required=("UCF-101-midframes", "split_zhou_UCF101.json"), classname_rule=folder_classname),
)

# ImageNet variants: test-only, for the domain-shift suite (train on imagenet, test here).
_real(
    RealDataset("imagenet_v2", "ImageNet-V2 matched-frequency (1000 classes, test only)", "imagenetv2",
               "imagenetv2-matched-frequency-format-val", "a photo of a {}.", reader=_read_imagenet_v2),
    RealInfo("imagenet_v2", "ImageNetV2", 1000, {"test": 10000},
             "imagenetv2/imagenetv2-matched-frequency-format-val/{0..999}/*.jpeg, imagenetv2/classnames.txt "
             "(copy of imagenet/classnames.txt)",
             ("https://github.com/modestyachts/ImageNetV2 (imagenetv2-matched-frequency.tar.gz)",),
             required=("imagenetv2-matched-frequency-format-val",), role="shift"),
)
_real(
    RealDataset("imagenet_sketch", "ImageNet-Sketch (1000 classes, test only)", "imagenet-sketch", "images",
               "a photo of a {}.", reader=_read_wnid_variant),
    RealInfo("imagenet_sketch", "ImageNetSketch", 1000, {"test": 50889},
             "imagenet-sketch/images/<wnid>/*.JPEG (the archive's sketch/ folder renamed images/), "
             "imagenet-sketch/classnames.txt (copy of imagenet/classnames.txt)",
             ("https://github.com/HaohanWang/ImageNet-Sketch",), required=("images",), role="shift"),
)
_real(
    RealDataset("imagenet_a", "ImageNet-A natural adversarial examples (200 classes, test only)",
               "imagenet-adversarial", "imagenet-a", "a photo of a {}.", reader=_read_wnid_variant),
    RealInfo("imagenet_a", "ImageNetA", 200, {"test": 7500},
             "imagenet-adversarial/imagenet-a/<wnid>/*.jpg (200 folders), imagenet-adversarial/classnames.txt "
             "(copy of imagenet/classnames.txt)",
             ("https://github.com/hendrycks/natural-adv-examples (imagenet-a.tar)",),
             required=("imagenet-a",), role="shift"),
)
_real(
    RealDataset("imagenet_r", "ImageNet-R renditions (200 classes, test only)", "imagenet-rendition",
               "imagenet-r", "a photo of a {}.", reader=_read_wnid_variant),
    RealInfo("imagenet_r", "ImageNetR", 200, {"test": 30000},
             "imagenet-rendition/imagenet-r/<wnid>/*.jpg (200 folders), imagenet-rendition/classnames.txt "
             "(copy of imagenet/classnames.txt)",
             ("https://github.com/hendrycks/imagenet-r (imagenet-r.tar)",),
             required=("imagenet-r",), role="shift"),
)

SHIFT_TARGETS = tuple(n for n, i in REAL.items() if i.role == "shift")


# -- checking a data root ----------------------------------------------------------------------------

def check_dataset(name: str, data_root: Path | None, check_files: bool = True) -> DatasetCheck:
    """Look at one real dataset under a data root: present or not, split sizes, missing image files."""
    ds, info = next(d for d in DATASETS if d.name == name), REAL[name]
    expected = dict(info.counts)
    fix = f"put {info.layout}; sources: {'; '.join(info.sources)}"
    if data_root is None:
        return DatasetCheck(name, None, "missing", expected=expected, message=f"no --data-root given; {fix}")
    folder = Path(data_root).expanduser() / ds.folder
    if not folder.is_dir():
        return DatasetCheck(name, folder, "missing", expected=expected, message=fix)
    absent = [p for p in info.required if not (folder / p).exists()]
    if absent:
        return DatasetCheck(name, folder, "incomplete", expected=expected,
                            message=f"missing {', '.join(absent)} in {folder}; {fix}")
    try:
        splits = ds.read(Path(data_root))
    except BenchError as err:
        return DatasetCheck(name, folder, "error", expected=expected, message=str(err))
    counts = {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}
    if name == "imagenet":
        counts.pop("val")  # val is the train list (see the module docstring)
    if info.role == "shift":
        counts = {"test": len(splits.test)}
    result = DatasetCheck(name, folder, "ok", counts, expected, classes=len(splits.classnames))
    problems = []
    if check_files and name not in ("imagenet", *SHIFT_TARGETS):  # those are read from the folders
        for d in (*splits.train, *splits.val, *splits.test):
            if not os.path.isfile(d.path):
                result.missing_files += 1
                result.missing_example = result.missing_example or d.path
        if result.missing_files:
            problems.append(f"{result.missing_files} image files listed in the split are missing "
                            f"(e.g. {result.missing_example})")
    if info.classname_rule is not None and ds.split_file:
        base = ds.image_root(folder)
        wrong = next((d for d in splits.train
                      if info.classname_rule(os.path.relpath(d.path, base)) != d.classname), None)
        if wrong is not None:
            problems.append(f"class name '{wrong.classname}' of {wrong.path} does not follow {info.dassl_name}'s "
                            "naming; is this the right split file?")
    off = {k: (counts[k], v) for k, v in expected.items() if k in counts and counts[k] != v}
    if off:
        problems.append("split sizes differ from CoOp's: " +
                        ", ".join(f"{k} {got} (expected {want})" for k, (got, want) in off.items()))
    if result.classes != info.classes:
        problems.append(f"{result.classes} classes (expected {info.classes})")
    if problems:
        result.status = "incomplete" if result.missing_files else "mismatch"
        result.message = "; ".join(problems)
    return result
