"""The package layers: swarm/ is the core and imports nothing above it; petalctl/ is the
composition root that wires the layers together. Checked on the source, so a lazy import inside
a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
# layer -> top-level packages it must never import
FORBIDDEN = {
    "swarm": {"client", "monitoring", "bot", "petalctl"},
    "client": {"monitoring", "bot", "petalctl"},
    "monitoring": {"bot", "petalctl"},
    "bot": {"petalctl"},
}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer: str):
    offenders = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        bad = imported_top_levels(path) & FORBIDDEN[layer]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert offenders == []


def test_the_checker_sees_a_lazy_import(tmp_path: Path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from client.errors import ClientError\n    import bot.app\n")
    assert imported_top_levels(sample) == {"client", "bot"}
