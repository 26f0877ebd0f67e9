"""The synthetic suite: procedural scenes with attribute captions, materialised in CoOp's layout.

A scene is a few attributes -- shape, colour, background texture, size, position, count, rendering
style and pixel noise -- drawn by :func:`render` (vectorised numpy, a whole batch at once, 2x
supersampled) and described by :func:`caption`. The embedded ``tiny`` CLIP is pre-trained on
(image, caption) pairs of the *clean* distribution (filled shapes, little noise, attribute words
only); the downstream datasets below re-use the same renderer with class names, styles and noise
levels chosen so that zero-shot prompting reaches some of them well and others barely, while the
image features still carry the class.

Everything is a pure function of fixed seeds: regenerating a dataset gives byte-identical files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from .. import atomic
from .dataset import DatasetCheck, DatasetDef
from .splits import Datum, write_split_json

GENERATOR_VERSION = 1  # part of every seed; the committed manifest (below) pins the bytes it must give
IMAGE_SIZE = 32
_SUPERSAMPLE = 2

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "ring")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 225), "yellow": (240, 220, 40),
    "orange": (250, 140, 20), "purple": (140, 55, 190), "pink": (250, 140, 200), "cyan": (40, 215, 225),
    "white": (248, 248, 248), "black": (15, 15, 15),
}
COLOUR_NAMES = tuple(COLOURS)
TEXTURES = ("plain", "striped", "dotted", "checkered", "grid", "wavy", "gradient", "speckled")
SIZES = ("small", "medium", "large")
POSITIONS = ("center", "left", "right", "top", "bottom")
COUNT_WORDS = ("one", "two", "three", "four")
STYLES = ("filled", "outline")
LIGHTS = {"neutral": ((1.0, 1.0, 1.0), 0.0), "warm": ((1.0, 0.7, 0.35), 0.08)}  # per-channel gain, offset

_SIZE_RADIUS = (0.3, 0.45, 0.65)  # in units of half the image width
_POSITION_XY = ((0.0, 0.0), (-0.45, 0.0), (0.45, 0.0), (0.0, -0.45), (0.0, 0.45))
_SLOTS = ((-0.48, -0.48), (0.48, -0.48), (-0.48, 0.48), (0.48, 0.48))  # quadrants for counts > 1
_COLOUR_TABLE = np.array(list(COLOURS.values()), dtype=np.float32) / 255.0


@dataclasses.dataclass
class Scenes:
    """Attributes of a batch of scenes, one array entry per image (indices into the tables above)."""

    shape: np.ndarray
    colour: np.ndarray
    texture: np.ndarray
    size: np.ndarray
    position: np.ndarray
    count: np.ndarray  # 1..4
    style: np.ndarray  # index into STYLES
    noise: np.ndarray  # std of additive Gaussian pixel noise, in [0, 1] pixel units
    light: np.ndarray  # index into LIGHTS: the illuminant's colour cast

    def __len__(self) -> int:
        return len(self.shape)


def sample_scenes(rng: np.random.Generator, n: int, **fixed) -> Scenes:
    """Scenes of the pre-training distribution; keyword arrays/ints override an attribute."""
    count = np.where(rng.random(n) < 0.6, 1, rng.integers(2, 5, n))
    attrs = dict(
        shape=rng.integers(0, len(SHAPES), n), colour=rng.integers(0, len(COLOURS), n),
        texture=rng.integers(0, len(TEXTURES), n), size=rng.integers(0, len(SIZES), n),
        position=rng.integers(0, len(POSITIONS), n), count=count, style=np.zeros(n, dtype=np.int64),
        noise=np.where(rng.random(n) < 0.3, rng.uniform(0.0, 0.06, n), 0.0), light=np.zeros(n, dtype=np.int64),
    )
    for key, value in fixed.items():
        attrs[key] = np.broadcast_to(np.asarray(value), (n,)).copy()
    return Scenes(**{k: np.asarray(v) for k, v in attrs.items()})


# ----------------------------------------------------------------------------------------------- rendering

def _shape_mask(kind: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside-test of shape ``kind`` at local coordinates x, y (the shape has radius about 1)."""
    name = SHAPES[kind]
    if name == "circle":
        return x * x + y * y <= 0.85
    if name == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.78
    if name == "triangle":  # apex up
        return (y <= 0.7) & (np.abs(x) <= (y + 0.95) * 0.62)
    if name == "star":  # five rounded points
        return np.hypot(x, y) <= 0.52 + 0.42 * np.cos(5 * (np.arctan2(y, x) + np.pi / 2))
    if name == "cross":
        ax, ay = np.abs(x), np.abs(y)
        return ((ax <= 0.3) & (ay <= 0.92)) | ((ay <= 0.3) & (ax <= 0.92))
    if name == "heart":
        hx, hy = 1.15 * x, -1.15 * y + 0.3
        return (hx * hx + hy * hy - 1) ** 3 - hx * hx * hy ** 3 <= 0
    if name == "diamond":
        return np.abs(x) + np.abs(y) <= 1.0
    if name == "ring":
        r2 = x * x + y * y
        return (r2 <= 0.95) & (r2 >= 0.35)
    raise ValueError(name)


def _shape_masks(shape: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside-test of each image's shape, vectorised over the batch (each shape on its own images)."""
    out = np.zeros(x.shape, dtype=bool)
    for k in np.unique(shape):
        idx = np.flatnonzero(shape == k)
        out[idx] = _shape_mask(int(k), x[idx], y[idx])
    return out


def _texture(scenes: Scenes, rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Background pattern in [0, 1] per pixel (two tones are mixed by it), each texture on its own images."""
    n = len(scenes)
    phi = rng.uniform(0, np.pi, n)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    freq = rng.uniform(2 * np.pi / 0.55, 2 * np.pi / 0.4, n)[:, None, None]  # period 0.4-0.55 (3-4.5 px)
    coarse = rng.random((n, 8, 8))
    out = np.zeros((n,) + u.shape[1:], dtype=np.float32)
    for k in np.unique(scenes.texture):
        idx = np.flatnonzero(scenes.texture == k)
        f, p, a = freq[idx], phase[idx], phi[idx]
        along = u * np.cos(a) + v * np.sin(a)
        name = TEXTURES[k]
        cell = 2 * np.pi / f
        du = np.mod(u + p / f, cell) - cell / 2
        dv = np.mod(v + p / f, cell) - cell / 2
        if name == "plain":
            pattern = np.zeros_like(along)
        elif name == "striped":
            pattern = np.sin(f * along + p) > 0
        elif name == "dotted":
            pattern = du * du + dv * dv <= (0.3 * cell) ** 2
        elif name == "checkered":
            pattern = (du > 0) ^ (dv > 0)
        elif name == "grid":
            pattern = (np.abs(du) < 0.09 * cell) | (np.abs(dv) < 0.09 * cell)
        elif name == "wavy":
            across = -u * np.sin(a) + v * np.cos(a)
            pattern = 0.5 + 0.5 * np.sin(f * 0.8 * along + 1.6 * np.sin(3.0 * across) + p)
        elif name == "gradient":
            pattern = np.clip(0.5 + 0.5 * along, 0, 1)
        elif name == "speckled":
            rep = u.shape[1] // 8
            pattern = np.repeat(np.repeat(coarse[idx], rep, axis=1), rep, axis=2) > 0.5
        else:
            raise ValueError(name)
        out[idx] = pattern
    return out


def render(scenes: Scenes, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw a batch of scenes: uint8 array (N, size, size, 3)."""
    n, s = len(scenes), size * _SUPERSAMPLE
    coords = (np.arange(s, dtype=np.float32) + 0.5) / s * 2 - 1
    v, u = np.meshgrid(coords, coords, indexing="ij")
    u, v = u[None], v[None]  # (1, s, s), u to the right, v downwards

    # background: a muted tone and a second tone mixed by the texture pattern
    grey = rng.uniform(0.3, 0.7, (n, 1, 1, 1))
    tone1 = np.clip(grey + rng.uniform(-0.07, 0.07, (n, 1, 1, 3)), 0, 1)
    contrast = rng.uniform(0.22, 0.32, (n, 1, 1, 1)) * np.where(grey > 0.5, -1, 1)
    pattern = _texture(scenes, rng, u, v)[..., None]
    img = tone1 + contrast * pattern

    # objects: one at a named position, or 2-4 small ones in shuffled quadrants
    base = _COLOUR_TABLE[scenes.colour][:, None, None, :]
    colour = np.clip(base + rng.uniform(-0.06, 0.06, (n, 1, 1, 3)), 0, 1)
    radius = np.asarray(_SIZE_RADIUS, dtype=np.float32)[scenes.size] * rng.uniform(0.9, 1.1, n)
    single = scenes.count == 1
    radius = np.where(single, radius, rng.uniform(0.26, 0.34, n))
    angle = rng.uniform(-0.3, 0.3, n)
    jitter = rng.uniform(-0.08, 0.08, (n, 4, 2))
    slots = np.argsort(rng.random((n, 4)), axis=1)
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    named = np.asarray(_POSITION_XY, dtype=np.float32)[scenes.position]
    cover = np.zeros((n, s, s), dtype=bool)
    for k in range(4):
        slot = np.asarray(_SLOTS, dtype=np.float32)[slots[:, k]]
        centre = np.where(single[:, None], named, slot) + jitter[:, k]
        idx = np.flatnonzero(scenes.count > k)  # images that have a k-th object
        du = (u - centre[idx, 0, None, None]) / radius[idx, None, None]
        dv = (v - centre[idx, 1, None, None]) / radius[idx, None, None]
        x, y = cos[idx] * du + sin[idx] * dv, -sin[idx] * du + cos[idx] * dv
        inside = _shape_masks(scenes.shape[idx], x, y)
        rim = np.flatnonzero(scenes.style[idx] == 1)  # the outline style keeps only the rim
        if len(rim):
            inside[rim] &= ~_shape_masks(scenes.shape[idx][rim], x[rim] / 0.72, y[rim] / 0.72)
        cover[idx] |= inside
    img = np.where(cover[..., None], colour, img)

    # box-filter down to the output size, then the illuminant and pixel noise
    img = img.reshape(n, size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(2, 4))
    gain = np.array([g for g, _ in LIGHTS.values()], dtype=np.float32)[scenes.light][:, None, None, :]
    offset = np.array([o for _, o in LIGHTS.values()], dtype=np.float32)[scenes.light][:, None, None, None]
    img = img * gain + offset
    noisy = scenes.noise > 0
    if noisy.any():
        img = img + rng.standard_normal(img.shape) * scenes.noise[:, None, None, None]
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ captions

def caption(scenes: Scenes, rng: np.random.Generator) -> list[str]:
    """One caption per scene that names a random subset of its attributes (the shape noun almost always)."""
    n = len(scenes)
    r = rng.random((n, 8))
    out = []
    for i in range(n):
        count = int(scenes.count[i])
        plural = count > 1
        noun = SHAPES[scenes.shape[i]]
        if r[i, 0] < 0.15:
            noun = "object" if r[i, 0] < 0.08 else "shape"
        noun = noun + ("s" if plural else "")
        words = []
        if plural or r[i, 1] < 0.15:
            words.append(COUNT_WORDS[count - 1])
        else:
            words.append("a")
        if not plural and r[i, 2] < 0.45:
            words.append(SIZES[scenes.size[i]])
        if r[i, 3] < 0.85:
            words.append(COLOUR_NAMES[scenes.colour[i]])
        words.append(noun)
        phrase = " ".join(words)
        if phrase.startswith("a ") and phrase.split()[1][0] in "aeiou":
            phrase = "an " + phrase[2:]
        if r[i, 4] < 0.7:
            texture = TEXTURES[scenes.texture[i]]
            phrase += f" on a {texture} background"
        if not plural and r[i, 5] < 0.35:
            where = POSITIONS[scenes.position[i]]
            phrase += " in the center" if where == "center" else f" at the {where}"
        if r[i, 6] < 0.5:
            phrase = "a photo of " + phrase
        out.append(phrase + ".")
    return out


# ------------------------------------------------------------------------------------------------ datasets

@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    name: str
    title: str
    classnames: tuple[str, ...]
    template: str
    scenes: Callable[[np.random.Generator, np.ndarray], Scenes]  # (rng, labels) -> scenes
    train: int = 24  # images per class
    val: int = 8
    test: int = 40

    @property
    def folder(self) -> str:
        return self.name

    @property
    def split_file(self) -> str:
        return f"split_zhou_{''.join(p.capitalize() for p in self.name.split('_'))}.json"


def _colour_scenes(noise: float = 0.0):
    def make(rng, labels):
        return sample_scenes(rng, len(labels), colour=labels, count=1, noise=noise)
    return make


def _texture_scenes(noise: float = 0.0):
    def make(rng, labels):
        return sample_scenes(rng, len(labels), texture=labels, count=1, size=0, noise=noise)
    return make


def _warm_scenes(rng, labels):
    return sample_scenes(rng, len(labels), colour=labels, count=1, light=1)


_CT_COLOURS = ("red", "green", "blue", "yellow", "purple", "white")


def _colourtexture_scenes(rng, labels):
    n, k = len(labels), len(TEXTURES)
    colour = np.array([COLOUR_NAMES.index(_CT_COLOURS[c]) for c in labels // k])
    return sample_scenes(rng, n, colour=colour, texture=labels % k, count=1, size=rng.integers(0, 2, n))


# Made-up words that never occur in the pre-training captions (see caption()): the image features know
# the concept, the text encoder has never seen its name.
_NOVEL = (("blicket", "circle", "red"), ("dax", "square", "blue"), ("wug", "triangle", "yellow"),
          ("fep", "star", "green"), ("toma", "cross", "purple"), ("zorp", "heart", "orange"),
          ("kiki", "diamond", "cyan"), ("gazzer", "ring", "pink"))
_NOVEL_TEXTURES = ("mib", "tufa", "plonk", "vesh", "grolly", "snib", "quandle", "tepo")  # TEXTURES in order


def _novel_scenes(rng, labels):
    n = len(labels)
    shape = np.array([SHAPES.index(_NOVEL[k][1]) for k in labels])
    colour = np.array([COLOUR_NAMES.index(_NOVEL[k][2]) for k in labels])
    return sample_scenes(rng, n, shape=shape, colour=colour, count=1, size=rng.integers(1, 3, n))


SPECS: dict[str, SyntheticSpec] = {s.name: s for s in (
    SyntheticSpec("syn_colour", "synthetic: colour of the object (10 classes, coarse)", COLOUR_NAMES,
                  "a photo of a {} object.", _colour_scenes()),
    SyntheticSpec("syn_texture", "synthetic: background texture (8 classes)", TEXTURES,
                  "a photo of an object on a {} background.", _texture_scenes(), test=50),
    SyntheticSpec("syn_colourtexture", "synthetic: object colour x background texture (48 fine-grained classes)",
                  tuple(f"{c}_shape_on_a_{t}_background" for c in _CT_COLOURS for t in TEXTURES),
                  "a photo of a {}.", _colourtexture_scenes, train=20, val=6, test=20),
    SyntheticSpec("syn_noisycolour", "synthetic, domain shift: colour under heavy pixel noise (10 classes)",
                  COLOUR_NAMES, "a photo of a {} object.", _colour_scenes(noise=0.45)),
    SyntheticSpec("syn_noisytexture", "synthetic, domain shift: background texture under pixel noise (8 classes)",
                  TEXTURES, "a photo of an object on a {} background.", _texture_scenes(noise=0.2), test=50),
    SyntheticSpec("syn_warmlight", "synthetic, domain shift: colour under a warm colour cast never seen in "
                  "pre-training (10 classes)", COLOUR_NAMES, "a photo of a {} object.", _warm_scenes),
    SyntheticSpec("syn_novel", "synthetic: shape-colour pairs under made-up names absent from pre-training "
                  "(8 classes)", tuple(name for name, _, _ in _NOVEL), "a photo of a {}.", _novel_scenes, test=50),
    SyntheticSpec("syn_noveltexture", "synthetic: background textures under made-up names absent from "
                  "pre-training (8 classes)", _NOVEL_TEXTURES, "a photo of an object on a {} background.",
                  _texture_scenes(), test=50),
)}

class GeneratedDataset(DatasetDef):
    """A synthetic dataset: read from the data root when it holds a copy, else generated into the cache."""

    def _held_by(self, data_root: Path | None) -> bool:
        return data_root is not None and (Path(data_root).expanduser() / self.folder).is_dir()

    def locate(self, data_root: Path | None) -> Path:
        return super().locate(data_root) if self._held_by(data_root) else materialize(self.name)

    @property
    def needs_data_root(self) -> bool:
        return False

    def where(self) -> str:
        return f"generated (or --data-root/{self.folder})"

    def preflight(self, data_root: Path | None) -> None:
        if self._held_by(data_root):
            super().preflight(data_root)  # else: generated on first use, inside the trial

    def check(self, data_root: Path | None, check_files: bool = True) -> DatasetCheck:
        """Besides the split, that the files are byte for byte the committed manifest's."""
        if self._held_by(data_root):
            result = super().check(data_root, check_files)
            folder = Path(data_root).expanduser() / self.folder
        else:
            folder = materialize(self.name)
            result = DatasetCheck(self.name, folder, "generated")
        problem = verify(self.name, folder) if result.status in ("ok", "generated") else None
        if problem:
            return dataclasses.replace(result, status="mismatch", message=f"{problem}; delete the folder to "
                                       "regenerate it, and if it differs again this machine generates other bytes")
        return result


# the `bench.datasets` entry point "synthetic"
DATASETS = [GeneratedDataset(name=s.name, title=s.title, folder=s.folder, image_dir="images", template=s.template,
                             split_file=s.split_file) for s in SPECS.values()]


def _seed(name: str, split: str) -> list[int]:
    return [zlib.crc32(name.encode()), zlib.crc32(split.encode()), GENERATOR_VERSION]


def generate(spec: SyntheticSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8 and labels (N,) of one split, labels in ascending blocks."""
    per_class = {"train": spec.train, "val": spec.val, "test": spec.test}[split]
    labels = np.repeat(np.arange(len(spec.classnames)), per_class)
    rng = np.random.default_rng(_seed(spec.name, split))
    images = [render(spec.scenes(rng, chunk), rng) for chunk in np.array_split(labels, max(1, len(labels) // 256))]
    return np.concatenate(images), labels


def default_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench")).expanduser() / "synthetic"


_STAMP = ".bench-synthetic.json"
# SHA-256 of every generated dataset's files (bench/assets/synthetic_manifest.json, written by
# scripts/synthetic_manifest.py). A cached folder is used only when its stamp carries the manifest's digest,
# so a folder generated by an older generator is rebuilt rather than silently reused.
MANIFEST = Path(__file__).resolve().parent.parent / "assets" / "synthetic_manifest.json"


def manifest() -> dict[str, dict]:
    return json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}


def content_digest(folder: Path) -> dict:
    """The file count and one SHA-256 over every file's relative path and content (the stamp left out)."""
    h, n = hashlib.sha256(), 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != _STAMP):
        h.update(f"{path.relative_to(folder).as_posix()}\n".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
        n += 1
    return {"files": n, "sha256": h.hexdigest()}


def verify(name: str, folder: Path) -> str | None:
    """None when ``folder`` holds exactly the manifest's bytes of dataset ``name``, else what differs."""
    expected = manifest().get(name)
    if expected is None:
        return f"no manifest entry for {name}; run scripts/synthetic_manifest.py"
    actual = content_digest(folder)
    if actual == expected:
        return None
    return (f"{name} in {folder} differs from the committed manifest ({actual['files']} files, sha256 "
            f"{actual['sha256'][:12]}; expected {expected['files']} files, {expected['sha256'][:12]})")


def _complete(folder: Path, spec: SyntheticSpec) -> bool:
    try:
        stamp = json.loads((folder / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    expected = manifest().get(spec.name, {}).get("sha256")
    return stamp.get("sha256") == expected and expected is not None and (folder / spec.split_file).is_file()


def _build(spec: SyntheticSpec, folder: Path, check: bool = True) -> None:
    from PIL import Image

    image_dir = folder / "images"
    splits: dict[str, list[Datum]] = {}
    for split in ("train", "val", "test"):
        images, labels = generate(spec, split)
        items = []
        for i, (image, label) in enumerate(zip(images, labels)):
            classname = spec.classnames[label]
            path = image_dir / classname / f"{split}_{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path, format="PNG")
            items.append(Datum(str(path), int(label), classname))
        splits[split] = items
    write_split_json(folder / spec.split_file, image_dir, splits)
    digest = content_digest(folder)
    (folder / _STAMP).write_text(json.dumps({"version": GENERATOR_VERSION, "name": spec.name, **digest}))
    problem = verify(spec.name, folder) if check else None
    if problem:  # the folder is still used, but its numbers cannot be compared with anyone else's
        from ..console import err

        err.print(f"warning: generated {problem}: this machine's numpy/PIL give other bytes, so results on it "
                  "will differ from the README's", highlight=False, soft_wrap=True)


def materialize(name: str, root: Path | None = None) -> Path:
    """Generate dataset ``name`` under ``root`` (default: the cache) unless already there; return its folder.

    Safe under concurrency: the dataset is built in a private temporary folder next to the target and
    renamed into place; a process that loses the race discards its copy.
    """
    spec = SPECS[name]
    root = Path(root).expanduser() if root is not None else default_root()
    target = root / spec.folder
    if _complete(target, spec):
        return target
    root.mkdir(parents=True, exist_ok=True)
    # a stale version or a broken folder is replaced; one another process finished meanwhile is kept
    with atomic.folder(target, keep=lambda folder: _complete(folder, spec)) as tmp:
        _build(spec, tmp)
    return target


def materialize_all(out: Path) -> list[Path]:
    """Generate every synthetic dataset under ``out``; return their folders."""
    return [materialize(name, out) for name in SPECS]
