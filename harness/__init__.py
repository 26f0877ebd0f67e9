"""bench: a composable benchmark harness for few-shot adaptation of CLIP models."""

__version__ = "0.1.0"

from .errors import BenchError  # noqa: E402
from .plugin import Method, Slot  # noqa: E402

__all__ = ["BenchError", "Method", "Slot", "__version__"]
