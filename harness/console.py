"""The two consoles of the command line: results to stdout, progress and errors to stderr."""
import sys

from rich.console import Console

# Wide tables stay readable when piped to a file (rich would otherwise wrap at 80 columns).
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)
