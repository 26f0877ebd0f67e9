"""Suite files (TOML): which datasets, shots, seeds, method stacks and model a run covers."""
from __future__ import annotations

import dataclasses
import importlib.resources
import tomllib
from pathlib import Path
from typing import Any

from .errors import BenchError
from .protocols import get_protocol


@dataclasses.dataclass
class Suite:
    name: str
    description: str
    datasets: list[str | dict[str, Any]]  # names, own-data paths, or tables {path, name, template(s), classnames}
    shots: list[int]
    seeds: list[int]
    methods: list[str]
    model: str = "tiny"
    pretrained: str = "bundled"
    protocol: str = "fewshot"  # a registered protocol (`bench list protocols`)
    shift_targets: list[str] = dataclasses.field(default_factory=list)
    set: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # method -> key -> value
    set_per_dataset: dict[str, dict[str, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    # Named variants: name -> {"method": base, setting: value, ...}; usable wherever a method name is.
    variants: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # `bench tune`: method -> setting -> range, replacing the method's declared search space (bench.tune)
    search: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    device: str | None = None  # None: cuda when visible, else cpu
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0

    def overrides_for(self, dataset: str) -> dict[str, dict[str, Any]]:
        merged = {m: dict(v) for m, v in self.set.items()}
        for method, values in self.set_per_dataset.get(dataset, {}).items():
            merged.setdefault(method, {}).update(values)
        return merged


def builtin_suites() -> dict[str, Path]:
    folder = importlib.resources.files("bench.suites")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def load_suite(name_or_path: str) -> Suite:
    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.is_file()):
        table = builtin_suites()
        if name_or_path not in table:
            from .units import suggest

            raise BenchError(f"unknown suite '{name_or_path}'{suggest(name_or_path, table)}; "
                             "see `bench list suites` or pass a path to a .toml file")
        path = table[name_or_path]
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise BenchError(f"suite file {path} is not valid TOML ({err})") from None
    fields = {f.name for f in dataclasses.fields(Suite)}
    unknown = set(raw) - fields
    if unknown:
        raise BenchError(f"suite file {path} has unknown keys {sorted(unknown)}; allowed: {sorted(fields)}")
    if isinstance(raw.get("datasets"), list):  # own-data paths in a suite file start at the file's folder
        from .data.own import anchored

        raw["datasets"] = [anchored(d, path.parent) for d in raw["datasets"]]
    raw.setdefault("name", path.stem)
    raw.setdefault("description", "")
    try:
        suite = Suite(**raw)
    except TypeError as err:
        raise BenchError(f"suite file {path} is incomplete ({err})") from None
    try:
        get_protocol(suite.protocol)
    except BenchError as err:
        raise BenchError(f"suite file {path}: {err}") from None
    if not isinstance(suite.variants, dict):
        raise BenchError(f"suite file {path}: 'variants' must be a table, e.g. "
                         '[variants] amt = { method = "mask", gdr = false }')
    from .registry import define_variants

    define_variants(suite.variants, f"suite file {path}")
    return suite
