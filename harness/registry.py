"""Method plugins, discovered through the ``bench.methods`` entry-point group (in-tree ones too)."""
from __future__ import annotations

import difflib
import functools
import re
from importlib.metadata import entry_points
from typing import Iterable

from .errors import BenchError
from .plugin import Method, Slot

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
    return dict(_discover()[0])


def broken_plugins() -> dict[str, str]:
    return dict(_discover()[1])


def get_method(name: str) -> type[Method]:
    table, broken = _discover()
    if name in table:
        return table[name]
    if name in broken:
        raise BenchError(f"method plugin '{name}' failed to load ({broken[name]}); reinstall or fix that package")
    raise BenchError(f"unknown method '{name}'{suggest(name, table)}; see `bench list methods`")


def parse_stack(stack: str) -> list[type[Method]]:
    """Parse ``a+b`` into plugin classes in pipeline order, checking that the slots are compatible."""
    parts = stack.strip().split("+")
    if not stack.strip() or any(not _STACK_PART.match(p) for p in parts):
        raise BenchError(f"malformed method stack '{stack}': join method names with '+', e.g. 'coop+mask'")
    if len(set(parts)) != len(parts):
        raise BenchError(f"method stack '{stack}' names a method twice; name each method once")
    plugins = [get_method(p) for p in parts]
    claimed: dict[object, str] = {}
    for plugin in plugins:
        if plugin.slot is None:
            continue
        if plugin.slot in claimed:
            raise BenchError(
                f"methods '{claimed[plugin.slot]}' and '{plugin.name}' in stack '{stack}' both change the "
                f"{plugin.slot.name.lower().replace('_', ' ')}; stack methods that change different parts")
        claimed[plugin.slot] = plugin.name
    if len(plugins) > 1 and any(p.slot is None for p in plugins):
        ref = next(p.name for p in plugins if p.slot is None)
        raise BenchError(f"'{ref}' is a reference row and cannot be stacked; run it on its own")
    return sorted(plugins, key=lambda p: p.slot)  # stable: pipeline order, encoder first


def canonical_stack(stack: str) -> str:
    """The one spelling of a stack that rows carry: pipeline order, an encoder method last
    (``mask+tip_adapter_f`` -> ``tip_adapter_f+mask``, as the papers write "X+R-AMT")."""
    plugins = parse_stack(stack)
    return "+".join(p.name for p in sorted(plugins, key=lambda p: (p.slot == Slot.ENCODER, p.slot or 0)))

