"""One registry for every kind of unit bench finds in installed packages: methods, datasets, protocols, models.

A :class:`Registry` reads one entry-point group (bench's own entries too, and first: a plugin never shadows
a built-in name). Each entry point names one unit or, where the registry takes tables, a list of them; the
registry's ``accept`` turns what an entry point names into ``(name, unit)`` pairs or says why it cannot
(:class:`NotAUnit`). A plugin that fails to load, names the wrong thing or claims a name already taken is
recorded with the reason, never fatal: ``bench list`` shows it, and asking for it by name says so.
Units may also be registered at run time (:meth:`Registry.register`). Unknown names get a did-you-mean.
"""
from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterable, TypeVar

from .errors import BenchError

T = TypeVar("T")
RUN_TIME = "registered at run time"


def suggest(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class NotAUnit(Exception):
    """What an entry point names is not a unit of the registry's kind (the message says why)."""


class Registry(Generic[T]):
    """The units of one entry-point ``group``. ``kind`` names them in messages ("method", "dataset");
    ``accept(entry point name, entry point value, loaded object)`` returns the ``(name, unit)`` pairs it
    holds or raises :class:`NotAUnit`."""

    def __init__(self, group: str, kind: str, accept: Callable[[str, str, Any], list[tuple[str, T]]]):
        self.group, self.kind, self.accept = group, kind, accept
        self._found: tuple[dict[str, T], dict[str, str], dict[str, str]] | None = None
        self._run_time: dict[str, T] = {}

    # -- discovery -----------------------------------------------------------------------------------
    def discover(self) -> tuple[dict[str, T], dict[str, str], dict[str, str]]:
        """(units, where each came from, entry points that failed with the reason), read once per process."""
        if self._found is None:
            self._found = self._load()
        return self._found

    def _load(self) -> tuple[dict[str, T], dict[str, str], dict[str, str]]:
        found: dict[str, T] = {}
        origin: dict[str, str] = {}
        broken: dict[str, str] = {}
        own_first = sorted(entry_points(group=self.group), key=lambda ep: ep.dist is None or ep.dist.name != "bench")
        for ep in own_first:
            package = ep.dist.name if ep.dist is not None else "?"
            try:
                value = ep.load()
            except Exception as err:  # a broken third-party plugin must not take bench down
                broken[ep.name] = f"{type(err).__name__}: {err}"
                continue
            try:
                units = self.accept(ep.name, ep.value, value)
            except NotAUnit as why:
                broken[ep.name] = str(why)
                continue
            for name, unit in units:
                where = f"{package} ({ep.name})" if ep.name != name else package
                if name in found:
                    if found[name] is not unit:
                        broken[name] = f"name claimed twice: by {origin[name]} and by {where}"
                    continue
                found[name], origin[name] = unit, where
        return found, origin, broken

    def reset(self) -> None:
        """Forget what was discovered (the next question reads the entry points again)."""
        self._found = None

    # -- questions ------------------------------------------------------------------------------------
    def items(self) -> dict[str, T]:
        """Every unit by name: the discovered ones, then those registered at run time."""
        return {**self.discover()[0], **self._run_time}

    def entry_names(self) -> set[str]:
        """The names known without loading any plugin: the entry points' names and run-time registrations
        (a table's entry point is named after the table, not its units)."""
        return {ep.name for ep in entry_points(group=self.group)} | set(self._run_time)

    def find(self, name: str) -> T | None:
        return self._run_time.get(name, self.discover()[0].get(name))

    def origin(self, name: str) -> str:
        """Where a unit came from: its package (and entry point, for a table), or run-time registration."""
        return RUN_TIME if name in self._run_time else self.discover()[1][name]

    def broken(self) -> dict[str, str]:
        return dict(self.discover()[2])

    def get(self, name: str, hint: str = "") -> T:
        """The unit called ``name``, or a one-line error: its plugin failed to load, or it is unknown (with
        the closest name and ``hint``)."""
        unit = self.find(name)
        if unit is None:
            raise self.missing(name, self.items(), hint)
        return unit

    def missing(self, name: str, choices: Iterable[str], hint: str = "") -> BenchError:
        """The error for a name that is not among ``choices``: a broken plugin's reason, else unknown."""
        found, _, broken = self.discover()
        if name in broken:
            return BenchError(f"{self.kind} plugin '{name}' failed to load ({broken[name]}); reinstall or fix that "
                              "package")
        if not found and not broken:  # not even bench's own: its package metadata predates the group
            hint = f"no {self.group} entry points are installed: reinstall bench (pip install -e .)"
        return BenchError(f"unknown {self.kind} '{name}'{suggest(name, choices)}" + (f"; {hint}" if hint else ""))

    # -- run time ---------------------------------------------------------------------------------------
    def register(self, name: str, unit: T) -> T:
        """Add a unit from code (tests, notebooks); a name already taken is refused."""
        if name in self._run_time or name in self.discover()[0]:
            raise ValueError(f"{self.kind} '{name}' registered twice")
        self._run_time[name] = unit
        return unit
