"""The package layering the README promises: registration/ and synthesis/ stand alone (they never import the nnU-Net
plugin package nnunetv2_diff4mm, not even lazily inside a function), so either can be reused without nnU-Net's
trainer code. What they need from the plugin (e.g. QA montages) is passed in as a function."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "nnunetv2_diff4mm"


def plugin_imports(path: Path, root: Path = REPO) -> list[str]:
    """'file:line module' (file relative to root) for every import of the plugin package anywhere in the file,
    top level or nested in a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        found += [f"{path.relative_to(root)}:{node.lineno} {m}" for m in modules
                  if m == PLUGIN or m.startswith(PLUGIN + ".")]
    return found


def test_the_walk_finds_top_level_and_lazy_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nimport nnunetv2_diff4mm.visualization as v\n\ndef f():\n"
                      "    from nnunetv2_diff4mm import conventions\n    from .x import y\n"
                      "    import nnunetv2_diff4mmx\n", encoding="utf-8")
    assert plugin_imports(sample, tmp_path) == ["sample.py:2 nnunetv2_diff4mm.visualization",
                                                "sample.py:5 nnunetv2_diff4mm"]


@pytest.mark.parametrize("package", ["registration", "synthesis"])
def test_standalone_packages_never_import_the_plugin(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    assert [hit for f in files for hit in plugin_imports(f)] == []
