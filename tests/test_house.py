"""The house rules: the engine's modules import each other without a cycle (imports inside functions
counted) and name no method, and every registered method, dataset and protocol keeps its plugin contract
(checked for all of them, as timm checks every model)."""
from __future__ import annotations

import ast
import dataclasses
import re
import typing
from pathlib import Path

import pandas as pd
import pytest

from bench import BenchError, Method, Part
from bench.data.catalog import dataset_origin, datasets, get_dataset
from bench.data.dataset import DatasetDef, check_template
from bench.plugin import Range, config_dict
from bench.protocols import DEFAULT, Protocol, get_protocol, infer_protocol, protocols
from bench.registry import canonical_stack, methods
from bench.results import schema

HARNESS = Path(__file__).resolve().parents[1] / "harness"


def module_name(path: Path) -> str:
    rel = path.relative_to(HARNESS).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["bench", *parts])


def _type_checking_only(tree: ast.Module) -> set[int]:
    """The import nodes under ``if TYPE_CHECKING:`` (never run)."""
    return {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for stmt in block.body for n in ast.walk(stmt)}


def bench_imports(path: Path) -> set[str]:
    """The bench modules a module imports: when it is loaded and inside its functions (a deferred import
    still ties the two modules together: a cycle through one is a cycle)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
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
    graph = {m: {t for t in bench_imports(p) if t in files and t != m} for m, p in files.items()}
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


# -- the dataset contract, for every registered dataset ------------------------------------------------
@pytest.fixture(params=sorted(datasets()))
def dataset(request) -> DatasetDef:
    return datasets()[request.param]


def test_a_dataset_declares_what_the_engine_needs(dataset):
    assert isinstance(dataset, DatasetDef) and re.fullmatch(r"[a-z][a-z0-9_]*", dataset.name)
    assert get_dataset(dataset.name) is dataset and dataset_origin(dataset.name)
    assert isinstance(dataset.title, str) and dataset.title.strip() and "\n" not in dataset.title
    assert isinstance(dataset.where(), str) and dataset.where()
    assert dataset.templates and all(check_template(t, dataset.name) for t in dataset.templates)
    assert dataset.template in dataset.templates


def test_a_dataset_without_its_files_says_so_in_one_line(dataset):
    """(Datasets that make their own files have none to miss.)"""
    if dataset.needs_data_root:
        got = dataset.check(None)
        assert got.status == "missing" and "--data-root" in got.message and "\n" not in got.message


# -- the protocol contract, for every registered protocol ----------------------------------------------
@pytest.fixture(params=sorted(protocols()))
def protocol(request) -> Protocol:
    return protocols()[request.param]


def test_a_protocol_declares_its_columns_metrics_and_eval_sets(protocol):
    assert isinstance(protocol, Protocol) and get_protocol(protocol.name) is protocol
    assert isinstance(protocol.description, str) and protocol.description
    columns = set(schema().names)
    assert isinstance(protocol.row_fields, tuple) and set(protocol.row_fields) <= columns
    assert protocol.metrics and all(isinstance(c, str) and isinstance(caption, str) and caption
                                    for c, caption in protocol.metrics)
    metrics = [c for c, _ in protocol.metrics]
    assert set(metrics) <= columns and len(set(metrics)) == len(metrics)
    assert set(protocol.row_fields) <= set(metrics)  # every column of its own is shown
    assert set(protocol.eval_sets) <= set(metrics)
    assert all(s is None or isinstance(s, str) for s in protocol.eval_sets.values())


def test_a_plain_row_is_recognised_by_no_protocol(protocol):
    """A row written before rows carried their protocol, holding nothing of any protocol's own, is a
    few-shot row: no protocol claims it."""
    row = pd.Series({c: None for c in schema().names}).to_frame().T.assign(
        top1=50.0, extras="{}", protocol=None).astype({"top1": float})
    plain = next(row.itertuples(index=False))
    assert not protocol.recognises(plain)
    assert infer_protocol(plain) == DEFAULT


def test_a_protocols_table_rule_gives_tables_of_the_plain_shape(protocol):
    """``Protocol.tables`` gives None or {shots: (mean, std)} with the labels and datasets of the plain table."""
    rows = pd.DataFrame([{"label": s, "stack": s, "dataset": d, "shots": 2, "seed": seed, "suite": None,
                          "protocol": protocol.name,
                          **{m: 40.0 + seed + i for i, (m, _) in enumerate(protocol.metrics)}}
                         for s in ("a", "b") for d in ("x", "y") for seed in (1, 2)])
    from bench.report.tables import accuracy_tables

    for metric, _ in protocol.metrics:
        plain = accuracy_tables(rows, None, metric if metric in rows else "top1")
        got = protocol.tables(rows, None, metric, accuracy_tables)
        if got is None:
            continue
        assert set(got) == set(plain) == {2}
        mean, std = got[2]
        assert list(mean.index) == list(plain[2][0].index) and list(mean.columns) == list(plain[2][0].columns)
        assert std.shape == mean.shape


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
