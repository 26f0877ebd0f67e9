"""One Registry for every kind of unit: discovery of one entry-point group, broken plugins recorded (never
fatal), a name claimed twice, did-you-mean, run-time registration."""
from __future__ import annotations

import pytest

from bench import BenchError
from bench.protocols import Protocol, _accept
from bench.units import RUN_TIME, Registry

FAKE_MODULE = '''
from bench.protocols import Protocol

class Odd(Protocol):
    name, description = "odd", "a protocol from a plugin"

class Impostor(Protocol):
    name, description = "fewshot", "claims a built-in name"

class Misnamed(Protocol):
    name, description = "other", "named otherwise than its entry point"

NOT_A_PROTOCOL = 42
'''
FAKE_ENTRY_POINTS = """[bench.protocols]
odd = fake_protocols:Odd
fewshot = fake_protocols:Impostor
misnamed = fake_protocols:Misnamed
notone = fake_protocols:NOT_A_PROTOCOL
missing = fake_protocols_nope:X
"""


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Registry:
    """A fresh protocol registry over bench's own entry points and a fake package's (on sys.path)."""
    dist = tmp_path / "fake_protocols-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-protocols\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(FAKE_ENTRY_POINTS)
    (tmp_path / "fake_protocols.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return Registry("bench.protocols", "protocol", _accept)


def test_plugins_are_found_beside_the_builtins_and_broken_ones_recorded(registry):
    found = registry.items()
    assert {"fewshot", "base2new", "shift", "odd"} <= set(found) and isinstance(found["odd"], Protocol)
    assert registry.origin("odd") == "fake-protocols" and registry.origin("fewshot") == "bench"
    assert type(found["fewshot"]).__module__ == "bench.protocols"  # a plugin never shadows a built-in
    broken = registry.broken()
    assert set(broken) == {"fewshot", "misnamed", "notone", "missing"}
    assert broken["fewshot"] == "name claimed twice: by bench and by fake-protocols"
    assert "not a bench Protocol subclass named 'misnamed'" in broken["misnamed"]
    assert broken["missing"].startswith("ModuleNotFoundError")
    assert {"odd", "missing"} <= registry.entry_names()


def test_asking_for_a_broken_or_unknown_name_is_one_line(registry):
    with pytest.raises(BenchError, match=r"protocol plugin 'missing' failed to load \(ModuleNotFoundError"):
        registry.get("missing")
    with pytest.raises(BenchError, match=r"unknown protocol 'od' \(did you mean 'odd'\?\); see the list"):
        registry.get("od", "see the list")


def test_run_time_registration_refuses_a_name_taken(registry):
    mine = registry.register("mine", Protocol())
    assert registry.get("mine") is mine and registry.origin("mine") == RUN_TIME
    for taken in ("mine", "odd"):
        with pytest.raises(ValueError, match="registered twice"):
            registry.register(taken, Protocol())
