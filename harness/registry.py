"""Method plugins, discovered through the ``bench.methods`` entry-point group (in-tree ones too), and
named variants: a method under its own name with settings of its own (``amt`` = ``mask`` with
``gdr=false``).

A variant is a subclass of its base made here, so stacking, parts, export/restore, ``--set amt.lr=...``
and a row's ``stack`` and ``settings`` follow without special cases: its config defaults are the base's
with the variant's settings on top, and its version is the base's plus those settings (part of the trial
id). Built-in variants are data on the plugins (``Method.variants``); suite files add theirs in a
``[variants]`` table (:func:`define_variants`), and every ``TrialSpec`` carries the definitions its
stack needs, so a worker process resolves them too."""
from __future__ import annotations

import difflib
import functools
import json
import re
from importlib.metadata import entry_points
from typing import Iterable

from .errors import BenchError
from .plugin import Method, Part

GROUP = "bench.methods"
_STACK_PART = re.compile(r"^[a-z][a-z0-9_]*$")


def suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


@functools.cache
def _discover() -> tuple[dict[str, type[Method]], dict[str, str]]:
    methods: dict[str, type[Method]] = {}
    broken: dict[str, str] = {}
    for ep in entry_points(group=GROUP):
        try:
            cls = ep.load()
        except Exception as err:  # a broken third-party plugin must not take bench down
            broken[ep.name] = f"{type(err).__name__}: {err}"
            continue
        if not (isinstance(cls, type) and issubclass(cls, Method)) or getattr(cls, "name", None) != ep.name:
            broken[ep.name] = f"{ep.value} is not a bench.Method subclass named '{ep.name}'"
            continue
        if ep.name in methods and methods[ep.name] is not cls:
            broken[ep.name] = f"name claimed twice: {methods[ep.name].__module__} and {cls.__module__}"
            continue
        methods[ep.name] = cls
    return methods, broken


def methods() -> dict[str, type[Method]]:
    """Every method name: the plugins and the variants known to this process."""
    return {**_discover()[0], **{n: get_method(n) for n in _all_variants()}}


def cheap_names() -> set[str]:
    """Method names known without importing any plugin (and so torch): the installed plugins' entry-point
    names and the variants defined so far. Built-in variants (``amt``) need the plugins loaded."""
    return {ep.name for ep in entry_points(group=GROUP)} | set(_defined)


def plugins() -> dict[str, type[Method]]:
    """The installed plugins only (no variants)."""
    return dict(_discover()[0])


def broken_plugins() -> dict[str, str]:
    return dict(_discover()[1])


def get_method(name: str, variants: dict[str, dict] | None = None) -> type[Method]:
    """A method by name: an installed plugin, a variant from ``variants`` (a spec's own definitions, name ->
    ``{"method": base, **settings}``), or a variant known to this process."""
    table, broken = _discover()
    if name in table:
        return table[name]
    known = {**_all_variants(), **(variants or {})}
    if name in known:
        return _variant_class(name, _comparable(_needed(name, known)))
    if name in broken:
        raise BenchError(f"method plugin '{name}' failed to load ({broken[name]}); reinstall or fix that package")
    raise BenchError(f"unknown method '{name}'{suggest(name, [*table, *known])}; "
                     "see `bench list methods`")


# -- named variants ------------------------------------------------------------------------------
_defined: dict[str, dict] = {}  # variants from suite files and specs: name -> {"method": base, **settings}


def _builtin_variants() -> dict[str, dict]:
    out = {}
    for base in _discover()[0].values():
        for name, settings in getattr(base, "variants", {}).items():
            out[name] = {"method": base.name, **settings}
    return out


def _all_variants() -> dict[str, dict]:
    return {**_builtin_variants(), **_defined}


def define_variants(table: dict[str, dict], where: str = "") -> None:
    """Make the variants of ``table`` (name -> ``{"method": base, setting: value, ...}``, optionally a
    ``description``) known by name.

    Defining a name again with the same definition is a no-op; a different one, or a plugin's name, is
    refused. Settings are checked against the base's config now."""
    prefix = f"{where}: " if where else ""
    for name, definition in table.items():
        if not isinstance(definition, dict) or not isinstance(definition.get("method"), str):
            raise BenchError(f"{prefix}variant '{name}' must be a table naming its base method "
                             f'(e.g. {name} = {{ method = "mask", gdr = false }})')
        if not _STACK_PART.match(name):
            raise BenchError(f"{prefix}bad variant name '{name}': use lower-case letters, digits and '_', "
                             "starting with a letter")
        if name in _discover()[0]:
            raise BenchError(f"{prefix}variant '{name}' has the name of an installed method; choose another name")
        known = _all_variants().get(name)
        if known is not None and _same(known, definition):
            continue  # defined before
        if known is not None:
            raise BenchError(f"{prefix}variant '{name}' is already defined as {_describe(known)}; "
                             "choose another name for this one")
        chain, base = [name], definition["method"]
        while base in _all_variants() and base not in chain:
            chain.append(base)
            base = _all_variants()[base]["method"]
        if base in chain:
            raise BenchError(f"{prefix}variant '{name}' builds on itself ({' -> '.join([*chain, base])}); "
                             "name an installed method as its base")
        try:
            get_method(name, {name: definition}).make_config("", 1)  # types, choices and ranges, now
        except BenchError as err:
            raise BenchError(f"{prefix}variant '{name}': {err}") from None
        _defined[name] = dict(definition)


def _same(a: dict, b: dict) -> bool:
    """Two definitions of one variant agree on its base and settings (descriptions aside)."""
    return a.get("method") == b.get("method") and _comparable(_settings_of(a)) == _comparable(_settings_of(b))


def _comparable(definition: dict) -> str:
    return json.dumps(definition, sort_keys=True, default=str)


_NOT_SETTINGS = ("method", "description")  # keys of a variant's definition that are not settings


def _settings_of(definition: dict) -> dict:
    return {k: v for k, v in definition.items() if k not in _NOT_SETTINGS}


def _describe(definition: dict) -> str:
    settings = _settings_of(definition)
    shown = ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in settings.items())
    return f"{definition['method']} ({shown})" if shown else definition["method"]


def variant_needs(stack: str) -> dict[str, dict]:
    """The definitions of the variants a stack names (and of variants they build on)."""
    table, out = _all_variants(), {}
    todo = [p for p in stack.strip().split("+")]
    while todo:
        name = todo.pop()
        if name in table and name not in out:
            out[name] = dict(table[name])
            todo.append(table[name]["method"])
    return out


def _needed(name: str, table: dict[str, dict]) -> dict[str, dict]:
    """The definitions of variant ``name`` and of the variants it builds on, from ``table``."""
    out = {}
    while name in table and name not in out:
        out[name] = table[name]
        name = table[name]["method"]
    return out


@functools.cache
def _variant_class(name: str, definitions: str) -> type[Method]:
    """The class of variant ``name`` as ``definitions`` (the JSON of :func:`_needed`) define it: made once per
    process and definition, never registered anywhere."""
    table = json.loads(definitions)
    definition = table[name]
    base = get_method(definition["method"], table)
    settings = _settings_of(definition)
    base_defaults = base.defaults_for

    def defaults_for(cls, dataset: str, shots: int) -> dict:
        return {**base_defaults(dataset, shots), **settings}

    return type(f"{base.__name__}_{name}", (base,), {
        "name": name,
        "description": f"{definition.get('description') or base.description} (variant: {_describe(definition)})",
        "version": f"{base.version}+{_comparable(settings)}",
        "variant_of": base.name,
        "variant_settings": dict(settings),
        "variants": {},
        "defaults_for": classmethod(defaults_for),
        "__module__": base.__module__,
    })


def split_stack(stack: str) -> list[str]:
    """``a+b`` -> ``["a", "b"]``, checking the spelling only (no plugin is loaded)."""
    parts = stack.strip().split("+")
    if not stack.strip() or any(not _STACK_PART.match(p) for p in parts):
        raise BenchError(f"malformed method stack '{stack}': join method names with '+', e.g. 'coop+mask'")
    if len(set(parts)) != len(parts):
        raise BenchError(f"method stack '{stack}' names a method twice; name each method once")
    return parts


def parse_stack(stack: str, variants: dict[str, dict] | None = None) -> list[type[Method]]:
    """Parse ``a+b`` into plugin classes in pipeline order, checking that they change disjoint parts;
    ``variants``: definitions of named variants besides those known to this process (a spec's)."""
    parts = split_stack(stack)
    plugins = [get_method(p, variants) for p in parts]
    for i, a in enumerate(plugins):
        for b in plugins[i + 1:]:
            shared = sorted(a.changes & b.changes)
            if shared:
                raise BenchError(
                    f"methods '{a.name}' and '{b.name}' in stack '{stack}' both change the "
                    f"{' and '.join(p.label for p in shared)}; stack methods that change different parts")
    if len(plugins) > 1 and any(not p.changes for p in plugins):
        ref = next(p.name for p in plugins if not p.changes)
        raise BenchError(f"'{ref}' is a reference row and cannot be stacked; run it on its own")
    return sorted(plugins, key=training_position)  # stable: training order, baked weights first


def training_position(plugin: type[Method]) -> int:
    """Where a method trains in a stack: at the first part it changes."""
    return min(plugin.changes, default=-1)


def canonical_stack(stack: str) -> str:
    """The one spelling of a stack that rows carry: training order, but a method that bakes image-encoder
    weights last (``mask+tip_adapter_f`` -> ``tip_adapter_f+mask``, as the papers write "X+R-AMT")."""
    plugins = parse_stack(stack)
    return "+".join(p.name for p in sorted(
        plugins, key=lambda p: (Part.IMAGE_WEIGHTS in p.changes, training_position(p))))


def define_recorded_variants(recorded) -> None:
    """Know the variants that result rows recorded (their ``variants`` JSON), so a report resolves a
    suite file's variants without the file; a definition that clashes with a known one is left out."""
    for text in dict.fromkeys(v for v in recorded if isinstance(v, str) and v):
        for name, definition in json.loads(text).items():
            try:
                define_variants({name: definition})
            except BenchError:
                pass
