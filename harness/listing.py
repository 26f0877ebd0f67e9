"""`bench list`: what is installed (methods, suites, datasets, models), with one-line descriptions."""
from __future__ import annotations

import dataclasses

from rich.markup import escape
from rich.table import Table

from .console import out


def methods_table(suite: str | None = None) -> Table:
    from .registry import broken_plugins, methods

    if suite:
        from .suite import load_suite

        load_suite(suite)  # defines its variants
    table = Table("method", "parts it changes", "description", "hyper-parameters (defaults)", "trains",
                  "`bench tune` searches")
    for name, m in sorted(methods().items()):
        params = ", ".join(f"{f.name}={_default(f)}" for f in dataclasses.fields(m.Config))
        if m.variant_of:
            params = "as " + m.variant_of + ", but " + ", ".join(
                f"{k}={_shown(v)}" for k, v in m.variant_settings.items())
        space = ", ".join(f"{k} {s}" for k, s in m.search_space().items())
        table.add_row(name, ", ".join(p.label for p in sorted(m.changes)) or "-", m.description, params or "-",
                      m.trains or "-", space or "- (fixed)")
    for name, why in broken_plugins().items():
        table.add_row(name, "-", f"[red]failed to load: {escape(str(why))}[/]", "-", "-", "-")
    table.caption = escape("a variant is a method under its own name with settings of its own; suite files "
                           "add theirs in a [variants] table (`bench list methods --suite FILE` shows them); "
                           "`bench list methods NAME` shows one method's settings")
    return table


def show_method(name: str) -> None:
    """One method: what it is, the parts it changes, and each setting with its default on a line of its own."""
    from .registry import get_method

    method = get_method(name)
    lines = [method.name + (f" (variant of {method.variant_of})" if method.variant_of else ""), method.description,
             f"changes: {', '.join(p.label for p in sorted(method.changes)) or '-'}", f"trains: {method.trains or '-'}",
             "settings (--set " + method.name + ".KEY=VALUE), defaults:"]
    config = method.make_config("", 1)
    lines += [f"  {f.name} = {_shown(getattr(config, f.name))}" for f in dataclasses.fields(method.Config)]
    space = method.search_space()
    lines += ["`bench tune` searches:" if space else "`bench tune` searches nothing (the method is fixed)"]
    lines += [f"  {k} {s}" for k, s in space.items()]
    for line in lines:
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def suites_table() -> Table:
    from .suite import builtin_suites, load_suite

    table = Table("suite", "description", "datasets", "shots", "seeds", "methods")
    for name in sorted(builtin_suites()):
        s = load_suite(name)
        table.add_row(name, s.description, ", ".join(s.datasets), ",".join(map(str, s.shots)),
                      ",".join(map(str, s.seeds)), ", ".join(s.methods))
    return table


def datasets_table() -> Table:
    from .data.catalog import broken_dataset_plugins, dataset_origin, datasets

    table = Table("dataset", "description", "files", "prompt", "source")
    for name, d in sorted(datasets().items()):
        prompt = d.template if len(d.templates) == 1 else f"{len(d.templates)} templates: {d.template} ..."
        table.add_row(name, d.title, d.where(), prompt, dataset_origin(name))
    for name, why in broken_dataset_plugins().items():
        table.add_row(name, f"[red]failed to load: {why}[/]", "-", "-", "-")
    table.caption = "any image folder or .csv/.jsonl list is a dataset too: pass its path (docs/datasets.md)"
    return table


def models_table() -> Table:
    from .models import MODELS

    table = Table("model", "description", "default --pretrained")
    for m in MODELS.values():
        table.add_row(m.name, m.description, m.default_pretrained)
    table.caption = "any other open_clip model name works as well (open_clip.list_models())"
    return table


def cache_table(root: str) -> Table:
    from .cache import entries

    table = Table("kind", "entries", "MB", title=f"cache {root}")
    kinds: dict[str, list[int]] = {}
    for kind, _, size, _ in entries(root):
        kinds.setdefault(kind, []).append(size)
    for kind, sizes in sorted(kinds.items()):
        table.add_row(kind, str(len(sizes)), f"{sum(sizes) / 2**20:.1f}")
    return table


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else (str(value) if value != "" else '""')


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return "?"
