"""Load a module of ``bench/`` (scripts, not a package) for the tests of its pure logic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_bench_module(name: str, filename: str) -> ModuleType:
    """Import ``bench/<filename>`` as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, BENCH / filename)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
