"""The standing mutation check (scripts/mutation_check.py): its list stays in step with the code (fast), and every
listed single-line mutation of the method, baseline and metric code makes a test fail (slow: ``-m slow``)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "mutation_check.py"


def _mutations():
    spec = importlib.util.spec_from_file_location("mutation_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutation_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.MUTATIONS


def test_every_mutation_applies_to_exactly_one_line_and_names_existing_tests():
    mutations = _mutations()
    assert len({m.name for m in mutations}) == len(mutations)
    for m in mutations:
        text = (ROOT / m.file).read_text()
        assert text.count(m.find) == 1, f"{m.name}: {m.find!r} occurs {text.count(m.find)} times in {m.file}"
        assert m.find != m.replace
        assert all((ROOT / t.split("::")[0]).exists() for t in m.tests), m.name


@pytest.mark.slow
def test_every_listed_mutation_is_caught():
    """Runs the whole list (about an hour on 2 cores): each mutation must make one of its tests fail."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=3 * 3600)
    found = re.search(r"caught (\d+) / (\d+) mutations", proc.stdout)
    assert found, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert found.group(1) == found.group(2), proc.stdout[-4000:]
