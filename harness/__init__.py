"""bench: a composable benchmark harness for few-shot adaptation of CLIP models."""

__version__ = "0.1.0"

import os as _os  # noqa: E402

# Weights come from the local cache or a file; set before huggingface_hub is imported, which reads it once.
if not _os.environ.get("BENCH_ONLINE"):
    _os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .errors import BenchError  # noqa: E402
from .plugin import Method, Part  # noqa: E402

__all__ = ["BenchError", "Method", "Part", "__version__"]
