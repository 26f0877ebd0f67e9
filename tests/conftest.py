"""Shared fixtures: a small dataset in CoOp's layout written by the tests, and a random tiny model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data.catalog import DatasetDef, datasets, register_dataset

FIXTURE_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def write_fixture_dataset(root: Path, per_class=(6, 4, 5), size: int = 32, seed: int = 0) -> Path:
    """Colour patches on noise, 4 classes, in CoOp's layout: fixture/images/<class>/*.png + split file."""
    rng = np.random.default_rng(seed)
    folder = root / "fixture"
    split = {"train": [], "val": [], "test": []}
    for label, (cname, rgb) in enumerate(FIXTURE_COLOURS.items()):
        (folder / "images" / cname).mkdir(parents=True, exist_ok=True)
        for part, n in zip(("train", "val", "test"), per_class):
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
                img[8:24, 8:24] = rgb
                rel = f"{cname}/{part}_{i}.png"
                Image.fromarray(img).save(folder / "images" / rel)
                split[part].append([rel, label, cname])
    (folder / "split_zhou_Fixture.json").write_text(json.dumps(split))
    return folder


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_fixture_dataset(root)
    if "fixture" not in datasets():
        register_dataset(DatasetDef(name="fixture", title="test fixture: colour patches", folder="fixture",
                                    image_dir="images", template="a photo of a {} patch.",
                                    split_file="split_zhou_Fixture.json"))
    return root


@pytest.fixture
def one_thread():
    """The tiny model's ops are small: on a shared 2-core machine one thread is much faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    """The tiny CLIP with random weights (frozen) and its tokenizer."""
    from bench.models import load_model

    model, _, tokenizer = load_model("tiny", "none")
    return model, tokenizer
