"""One factory for models: open_clip names and pretrained tags, plus bench's embedded ``tiny`` CLIP."""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
from pathlib import Path

from .errors import BenchError
from .units import NotAUnit, Registry

ASSETS = Path(__file__).parent / "assets"
TINY_WEIGHTS = ASSETS / "tiny.safetensors"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    default_pretrained: str


# bench's own table (the `bench.models` entry point `bench`); any other open_clip model name works too.
BUILTIN_MODELS = (
    ModelInfo("tiny", "bench's embedded ViT CLIP (32 px, patch 4), pre-trained on synthetic captions", "bundled"),
    ModelInfo("ViT-B-16", "OpenAI CLIP ViT-B/16 (loaded as ViT-B-16-quickgelu for openai weights)", "openai"),
    ModelInfo("ViT-B-32", "OpenAI CLIP ViT-B/32 (loaded as ViT-B-32-quickgelu for openai weights)", "openai"),
)


def _accept(name: str, value: str, found) -> list[tuple[str, ModelInfo]]:
    table = list(found) if isinstance(found, (list, tuple)) else [found]
    if not table or not all(isinstance(m, ModelInfo) for m in table):
        raise NotAUnit(f"{value} is not a bench ModelInfo or a list of them")
    return [(m.name, m) for m in table]


MODELS: Registry[ModelInfo] = Registry("bench.models", "model", _accept)


def models() -> dict[str, ModelInfo]:
    """The models `bench list models` shows: those the `bench.models` entry points declare."""
    return MODELS.items()

# OpenAI weights were trained with QuickGELU; the plain configs use nn.GELU and only warn.
_QUICKGELU_TAGS = {"openai", "dfn2b"}


def register_tiny() -> None:
    import open_clip

    if "tiny" not in open_clip.list_models():
        open_clip.add_model_config(ASSETS / "tiny.json")


def resolve(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """Map (model, pretrained) to what open_clip is asked for."""
    pretrained = pretrained or (MODELS.find(model) or ModelInfo(model, "", "")).default_pretrained or None
    if model == "tiny" and pretrained in (None, "bundled"):
        return "tiny", str(TINY_WEIGHTS)
    if pretrained in _QUICKGELU_TAGS and not model.endswith("-quickgelu"):
        model = f"{model}-quickgelu"
    return model, pretrained


def default_pretrained(model: str) -> str | None:
    """A model's own default weights: bench's table, else OpenAI's when open_clip has them, else its first tag."""
    import open_clip

    if MODELS.find(model) is not None:
        return MODELS.get(model).default_pretrained
    register_tiny()
    tags = open_clip.list_pretrained_tags_by_model(model) if model in open_clip.list_models() else []
    return "openai" if "openai" in tags else (tags[0] if tags else None)


def image_blocks(model: str, pretrained: str | None) -> int | None:
    """How many transformer blocks the model's image encoder has, from its open_clip config (no weights
    loaded); None for an encoder that is not a ViT."""
    name = resolve(model, pretrained)[0]
    if name == "tiny":  # bench's own: read without importing open_clip (planning does not need it)
        config = json.loads((ASSETS / "tiny.json").read_text())
    else:
        import open_clip

        config = open_clip.get_model_config(name) or {}
    layers = (config.get("vision_cfg") or {}).get("layers")
    return layers if isinstance(layers, int) else None


def _checked(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """Resolve (model, pretrained) and check the name and, for a path, that the file exists."""
    name, weights = resolve(model, pretrained)
    if (name, weights) == ("tiny", str(TINY_WEIGHTS)):  # bench's own: nothing to look up, so planning
        return name, weights                            # needs no open_clip
    import open_clip

    register_tiny()
    if name not in open_clip.list_models():
        if model in open_clip.list_models():  # e.g. 'openai' asks for a QuickGELU variant the model lacks
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
            raise BenchError(f"model '{model}' has no '{pretrained}' weights (no {name} config); pass --pretrained "
                             f"with one of its tags ({tags}), a checkpoint path, or none")
        raise MODELS.missing(model, open_clip.list_models(), "see `bench list models`")
    if weights in (None, "none", "random"):
        return name, None
    if _is_tag(name, weights):
        return name, weights
    path = Path(weights).expanduser()
    if not path.is_file():
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name))
        raise BenchError(f"weights '{weights}' are neither a pretrained tag of {name} nor a file; pass "
                         f"--pretrained with a checkpoint path{f' or a tag ({tags})' if tags else ''}")
    return name, str(path)


def preflight(model: str, pretrained: str | None, cache_dir: str | None = None) -> None:
    """Check before any trial starts that the model exists and its weights can be had offline."""
    name, weights = _checked(model, pretrained)
    if weights and _is_tag(name, weights):
        import open_clip

        try:
            open_clip.pretrained.download_pretrained(open_clip.get_pretrained_cfg(name, weights),
                                                     cache_dir=cache_dir)
        except Exception:
            raise BenchError(_missing_weights(name, weights)) from None


def _missing_weights(name: str, weights: str) -> str:
    return (f"weights for {name} '{weights}' are not in the local cache and downloading is off; put the "
            "checkpoint in the Hugging Face cache (HF_HOME, as open_clip downloads it) or pass --pretrained "
            "/path/to/checkpoint, or set BENCH_ONLINE=1 to download")


def load_model(model: str, pretrained: str | None, device: str = "cpu", cache_dir: str | None = None):
    """Return ``(model, eval_transform, tokenizer)``, the model frozen and in eval mode.

    ``pretrained`` is an open_clip tag (read from the weights cache; offline unless BENCH_ONLINE=1),
    a local checkpoint path (OpenAI's archive or an open_clip state dict), ``none`` for random weights,
    or ``bundled`` for tiny's own weights.
    """
    import open_clip

    name, weights = _checked(model, pretrained)
    register_tiny()
    key = (name, weights, device, cache_dir)
    if weights is None or key not in _LOADED:  # random init depends on the seed: never memoised
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=weights, device=device, cache_dir=cache_dir)
        except RuntimeError:
            if weights and _is_tag(name, weights):
                raise BenchError(_missing_weights(name, weights)) from None
            raise
        clip.eval().requires_grad_(False)
        if weights is None:
            return clip, preprocess, open_clip.get_tokenizer(name)
        _LOADED.clear()  # one pristine model per process is enough
        _LOADED[key] = (clip, preprocess)
    clip, preprocess = _LOADED[key]
    # Trials change their model (e.g. masks are baked into it): each gets its own copy of the pristine one.
    return copy.deepcopy(clip), preprocess, _tokenizer(name)


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    """open_clip's tokenizer of a model (stateless; building it reads the BPE vocabulary, ~0.15 s)."""
    import open_clip

    return open_clip.get_tokenizer(name)


# A Ray worker runs many trials (actors are reused): the loaded model is kept between them.
_LOADED: dict = {}


def _is_tag(name: str, weights: str) -> bool:
    if name == "tiny":  # bench's own model has no open_clip tags
        return False
    import open_clip

    return weights in open_clip.list_pretrained_tags_by_model(name)
