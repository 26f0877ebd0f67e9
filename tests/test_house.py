"""The house rules: the engine's modules import each other without a cycle and name no method, and every
registered method keeps the plugin contract (checked for all of them, as timm checks every model)."""
from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from bench import BenchError, Method, Part
from bench.plugin import Range, config_dict
from bench.registry import canonical_stack, methods

HARNESS = Path(__file__).resolve().parents[1] / "harness"


def module_name(path: Path) -> str:
    rel = path.relative_to(HARNESS).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["bench", *parts])


def module_level_imports(path: Path) -> set[str]:
    """The bench modules a module imports when it is loaded (imports inside functions are deferred)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("bench"):
                out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("bench"))
    return out


def test_harness_modules_import_each_other_without_a_cycle():
    files = {module_name(p): p for p in HARNESS.rglob("*.py")}
    graph = {m: {t for t in module_level_imports(p) if t in files and t != m} for m, p in files.items()}
    # a package's __init__ is loaded before its modules: importing bench.x implies bench
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(t):] + [t]))
            if t not in state:
                visit(t, trail + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def string_constants(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    parts_of_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    fstrings = ["".join(v.value if isinstance(v, ast.Constant) else "{}" for v in n.values)
                for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)]
    return fstrings + [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                       and id(n) not in docstrings and id(n) not in parts_of_fstrings]


def test_the_engine_names_no_method():
    """Docstrings, comments and the examples of help and error texts ("e.g. coop+mask") aside."""
    import re

    names = set(methods())
    found = []
    for path in HARNESS.rglob("*.py"):
        for text in string_constants(path):
            hits = {w for w in re.findall(r"[a-z][a-z0-9_]*", text) if w in names and "e.g." not in text}
            found += [f"{path.name}: {text!r}" for _ in hits]
    assert not found, found


# -- the plugin contract, for every registered method ------------------------------------------------
@pytest.fixture(params=sorted(methods()))
def plugin(request) -> type[Method]:
    return methods()[request.param]


def test_declares_what_the_engine_needs(plugin):
    assert isinstance(plugin.name, str) and plugin.description and isinstance(plugin.version, str)
    assert isinstance(plugin.changes, frozenset) and all(isinstance(p, Part) for p in plugin.changes)
    assert dataclasses.is_dataclass(plugin.Config)
    assert isinstance(plugin.row_fields, tuple)
    assert not (plugin.gain_baseline and plugin.changes), "a gain baseline changes nothing"
    assert plugin.reusable() == (plugin.export is not Method.export)


def test_defaults_validate_for_every_dataset_kind(plugin):
    for dataset, shots in (("imagenet", 16), ("eurosat", 1), ("syn_colour", 4)):
        config = plugin.make_config(dataset, shots)
        again = plugin.make_config(dataset, shots, {k: str(v) if not isinstance(v, (tuple, list)) else
                                                    ",".join(map(str, v)) for k, v in config_dict(config).items()
                                                    if v is not None})
        assert config_dict(again) == config_dict(config)  # every default survives --set as text


def test_choices_and_ranges_are_enforced(plugin):
    with pytest.raises(BenchError, match="unknown setting"):
        plugin.make_config("syn_colour", 4, {"no_such_setting": 1})
    hints = typing.get_type_hints(plugin.Config, include_extras=True)
    for name, hint in hints.items():
        marks = typing.get_args(hint)[1:] if typing.get_origin(hint) is typing.Annotated else ()
        if typing.get_origin(hint) is typing.Literal:
            with pytest.raises(BenchError, match="choose one of"):
                plugin.make_config("syn_colour", 4, {name: "not-a-choice"})
        for mark in marks:
            if isinstance(mark, Range) and mark.min is not None:
                with pytest.raises(BenchError, match="must be"):
                    plugin.make_config("syn_colour", 4, {name: str(mark.min - 1)})


def test_canonical_spelling_is_one_per_stack():
    table = methods()
    encoder = [n for n, m in table.items() if Part.IMAGE_WEIGHTS in m.changes]
    heads = [n for n, m in table.items() if m.changes and Part.IMAGE_WEIGHTS not in m.changes]
    for e in encoder:
        for h in heads:
            assert canonical_stack(f"{e}+{h}") == canonical_stack(f"{h}+{e}") == f"{h}+{e}"


# -- one trial, resolved once and read once -----------------------------------------------------------
def test_one_trial_resolves_once_and_reads_its_dataset_once(tmp_path, monkeypatch):
    """Planned and run in one process (the serial executor), a base-to-new trial resolves its stack once and
    lists its dataset once, though it is scored on the new classes too."""
    import bench.spec
    from bench.data.dataset import DatasetDef
    from bench.plan import plan_trials
    from bench.results import RunFolder
    from bench.runner import run_trials
    from bench.runner.serial import SerialExecutor
    from bench.suite import load_suite

    suite_file = tmp_path / "b2n.toml"
    suite_file.write_text('name = "b2n"\ndatasets = ["syn_novel"]\nshots = [2]\nseeds = [1]\n'
                          'methods = ["zeroshot"]\nmodel = "tiny"\npretrained = "bundled"\nprotocol = "base2new"\n')
    resolved, reads = [], []
    parse_stack, read = bench.spec.parse_stack, DatasetDef.read
    monkeypatch.setattr(bench.spec, "parse_stack", lambda *a: resolved.append(a[0]) or parse_stack(*a))
    monkeypatch.setattr(DatasetDef, "read", lambda self, root: reads.append(self.name) or read(self, root))
    specs = plan_trials(load_suite(str(suite_file)), run="once", results=str(tmp_path), cache_dir=None,
                        infer_images=0)
    run_trials(RunFolder(tmp_path, "once"), specs, SerialExecutor())
    rows = RunFolder(tmp_path, "once").read()
    assert list(rows.status) == ["ok"] and rows.top1_new.notna().all()  # scored on base and new classes
    assert resolved == ["zeroshot"]
    assert reads == ["syn_novel"]
