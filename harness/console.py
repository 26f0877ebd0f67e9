"""The two consoles of the command line: results to stdout, progress and errors to stderr."""
import os
import sys

from rich.console import Console

# Wide tables stay readable when piped to a file (rich would otherwise wrap at 80 columns), unless COLUMNS
# says how wide (rich reads it).
out = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit() else 200)
err = Console(stderr=True)
