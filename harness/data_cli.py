"""`bench data ...`: see which datasets a data root holds, print a trial's few-shot split, make the synthetic data."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from . import atomic
from .errors import BenchError

data_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="Datasets: check a data root, show few-shot splits, generate the synthetic suite.")
from .console import err as _err, out as _out  # noqa: E402

DATA_ROOT_HELP = "Folder holding the datasets in CoOp's layout (imagenet/, caltech-101/, ...)."


def split_as_json(dataset: str, shots: int, seed: int, data_root: Optional[str]) -> dict:
    """The few-shot train and val images a trial of (dataset, shots, seed) uses, paths relative to the
    dataset's image folder (as in its split file), with labels and class names."""
    from .data.catalog import canonical_entry, get_dataset, load_fewshot

    if seed < 0:
        raise BenchError(f"--seed must be a non-negative integer, got {seed}")
    dataset = canonical_entry(dataset)
    ds = get_dataset(dataset)
    root = Path(data_root).expanduser() if data_root else None
    data, short = load_fewshot(dataset, root, shots, seed)
    base = ds.image_root(ds.locate(root))

    def rows(items):
        return [[Path(os.path.relpath(d.path, base)).as_posix(), d.label, d.classname] for d in items]

    return {
        "dataset": ds.name, "shots": shots, "seed": seed, "image_dir": str(base),
        "train": rows(data.train), "val": rows(data.val),
        "classes_with_fewer_than_shots": sorted(short),
    }


def format_split_json(result: dict) -> str:
    """JSON with one image per line (diff- and grep-friendly)."""
    lines = []
    for key, value in result.items():
        if key in ("train", "val"):
            body = ",\n".join("  " + json.dumps(r) for r in value)
            lines.append(f"{json.dumps(key)}: [\n{body}\n ]" if value else f"{json.dumps(key)}: []")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
    return "{\n " + ",\n ".join(lines) + "\n}"


@data_app.command()
def split(
    dataset: str = typer.Option(..., help="Dataset name (see `bench list datasets`), image folder or .csv/.jsonl list."),
    shots: int = typer.Option(..., help="Images per class (K)."),
    seed: int = typer.Option(..., help="Seed; 1, 2 and 3 pick the same images as CoOp."),
    data_root: Optional[str] = typer.Option(None, help=DATA_ROOT_HELP),
    out: Optional[Path] = typer.Option(None, help="Write the JSON here instead of printing it."),
):
    """The few-shot train and val images of one (dataset, shots, seed), as JSON (Dassl's sampling)."""
    result = split_as_json(dataset, shots, seed, data_root)
    text = format_split_json(result)
    if out is None:
        typer.echo(text)
        return
    if out.is_dir():
        raise BenchError(f"--out {out} is a folder; give a file name, e.g. {out / 'split.json'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out, text + "\n")
    _err.print(f"wrote {out}: {len(result['train'])} train, {len(result['val'])} val images")


def _datasets_to_check(suite: Optional[str], names: Optional[str]) -> list[str]:
    from .data.catalog import canonical_entry, datasets

    if names:
        return [canonical_entry(n.strip()) for n in names.split(",") if n.strip()]
    if suite is None:
        return [n for n, d in datasets().items() if d.needs_data_root]
    from .suite import load_suite

    s = load_suite(suite)
    return list(dict.fromkeys([*(canonical_entry(d) for d in s.datasets), *getattr(s, "shift_targets", [])]))


_STYLE = {"ok": "green", "missing": "red", "incomplete": "red", "error": "red", "mismatch": "yellow",
          "generated": "cyan"}


@data_app.command()
def check(
    suite: Optional[str] = typer.Option(None, help="Only the datasets of this suite (name or .toml path)."),
    datasets: Optional[str] = typer.Option(None, help="Only these datasets: names, image folders or .csv/.jsonl "
                                           "lists, comma-separated."),
    data_root: Optional[str] = typer.Option(None, help=DATA_ROOT_HELP),
    files: bool = typer.Option(True, help="Check that every listed image exists (own data: and can be decoded)."),
):
    """Which datasets the data root holds: split sizes against CoOp's, missing files, and what goes where."""
    from .data.catalog import get_dataset

    names = _datasets_to_check(suite, datasets)
    root = Path(data_root).expanduser() if data_root else None
    if root is not None and not root.is_dir():
        raise BenchError(f"--data-root {root} is not a folder; create it and put the datasets in it "
                         "(see docs/datasets.md)")
    table = Table(title=f"datasets under {root}" if root else "datasets (no --data-root given)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("dataset", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for col in ("classes", "train", "val", "test", "lost"):
        table.add_column(col, justify="right", no_wrap=True)
    notes: list[tuple[str, str]] = []
    n_ok = n_error = 0
    for entry in names:
        ds = get_dataset(entry)
        name = ds.name
        res = ds.check(root, check_files=files)
        n_ok += res.status in ("ok", "generated")
        n_error += res.status == "error"
        if res.status == "generated":
            table.add_row(name, "[cyan]generated, = manifest[/]", "-", "-", "-", "-", "-")
            continue

        def cell(split: str) -> str:
            want = res.expected.get(split)
            if split not in res.counts:
                if split == "val" and (name == "imagenet" or res.val_from_train) and res.status not in (
                        "missing", "incomplete", "error"):
                    return "= train"
                return f"[dim]({want})[/]" if want is not None else "-"
            got = res.counts[split]
            if want is None or got == want:
                return f"{got}"
            return f"[yellow]{got}[/]/{want}"

        style = _STYLE.get(res.status, "white")
        table.add_row(name, f"[{style}]{res.status}[/]", str(res.classes) if res.classes else "-",
                      cell("train"), cell("val"), cell("test"),
                      str(res.missing_files) if res.status not in ("missing", "error") else "-")
        if res.message:
            notes.append((name, res.message))
    table.caption = f"{n_ok} of {len(names)} ready; expected counts in parentheses (CoOp's table); lost = images listed but not on disk"
    _out.print(table)
    for name, message in notes:
        _out.print(f"[bold]{name}[/]: {message}", highlight=False, soft_wrap=True)
    if notes:
        _out.print("layouts and sources: docs/datasets.md")
    if n_error:
        raise typer.Exit(1)


@data_app.command()
def synth(out: Path = typer.Option(..., help="Folder to write the synthetic datasets into.")):
    """Generate every synthetic dataset (CoOp layout) under OUT, e.g. to use it as --data-root."""
    from .data.synthetic import materialize_all

    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    folders = materialize_all(Path(out))
    _err.print(f"wrote {len(folders)} synthetic datasets under {out}")
