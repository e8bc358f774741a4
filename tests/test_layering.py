"""Packages import only downward: a layering violation fails here, naming the file and the import.

Layers, bottom up (a package may import its own layer and the ones below):
  the package root (constants, errors, manifest, tokenizer, genai_config, atomic), plugins
  runtime (backends: depends on the compiled-model contract, never on how it was produced)
  exporter, graph_passes, sparsity (produce compiled models; never import the runtime)
  compare, evaluation (run models through the runtime)
  cli (imports anything; nothing imports it)
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "runtime": {"exporter", "graph_passes", "sparsity", "compare", "evaluation", "cli"},
    "plugins": {"runtime", "exporter", "graph_passes", "sparsity", "compare", "evaluation", "cli"},
    "exporter": {"runtime", "graph_passes", "sparsity", "compare", "evaluation", "cli"},
    "graph_passes": {"runtime", "exporter", "compare", "evaluation", "cli"},
    "sparsity": {"runtime", "graph_passes", "compare", "evaluation", "cli"},
    "compare": {"cli", "evaluation", "graph_passes"},
    "evaluation": {"cli", "compare"},
}
ROOT_MODULES = {"constants", "errors", "manifest", "tokenizer", "atomic", "genai_config"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, planforge sub-package) for every absolute ``planforge.X`` import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "planforge"
                                     else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "planforge" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def violations(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if not (rel.parts[0] in FORBIDDEN or rel.parts[0] == "cli" or len(rel.parts) == 1):
            continue  # tests, samples, docs and the virtual environment are not layers
        layer = rel.parts[0] if len(rel.parts) > 1 else "root"
        for line, target in _imports(path):
            if target == "cli" and layer != "cli":
                found.append(f"{rel}:{line} imports planforge.cli (nothing may)")
            elif layer == "root" and target not in ROOT_MODULES:
                found.append(f"{rel}:{line} (package root) imports planforge.{target}")
            elif target in FORBIDDEN.get(layer, set()):
                found.append(f"{rel}:{line} ({layer}) imports planforge.{target}")
    return found


def test_no_package_imports_upward():
    found = violations(ROOT)
    assert not found, "upward imports:\n" + "\n".join(found)


@pytest.mark.parametrize("source, target", [("runtime/x.py", "exporter"), ("graph_passes/x.py", "runtime"),
                                            ("exporter/x.py", "cli")])
def test_the_check_catches_a_violation(tmp_path, source, target):
    """The rule above is not vacuous: a planted upward import is reported, with its file and line."""
    planted = tmp_path / source
    planted.parent.mkdir(parents=True)
    planted.write_text(f"import numpy\nfrom planforge.{target}.api import something\n")
    (found,) = violations(tmp_path)
    assert found.startswith(f"{source}:2 ") and f"imports planforge.{target}" in found
