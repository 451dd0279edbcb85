"""Code rules whose breach corrupts results silently, checked over every source file (AST walk)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("nnunetv2_diff4mm", "registration", "synthesis", "benchmarks", "tests")


def views_of_temporaries(source: str, name: str = "<string>") -> list[str]:
    """'name:line' of every sitk.GetArrayViewFromImage(...) whose image is a temporary (a call or an operator
    result, not a variable): SimpleITK's view does not keep the image alive, so once Python collects it the
    view reads freed memory (SimpleITK/SimpleITK#1693). Seen here: pick_cases counted tumor voxels in a case
    without tumor, one CI run in several."""
    found = []
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == \
                "GetArrayViewFromImage" and node.args:
            if not isinstance(node.args[0], (ast.Name, ast.Attribute, ast.Subscript)):
                found.append(f"{name}:{node.lineno}")
    return found


def test_the_rule_finds_a_view_of_a_temporary_image_and_allows_a_named_one():
    assert views_of_temporaries("a = sitk.GetArrayViewFromImage(sitk.ReadImage(p)) == 2") == ["<string>:1"]
    assert views_of_temporaries("a = sitk.GetArrayViewFromImage(x - y)") == ["<string>:1"]
    assert views_of_temporaries("img = sitk.ReadImage(p)\na = sitk.GetArrayViewFromImage(img)") == []
    assert views_of_temporaries("a = sitk.GetArrayViewFromImage(case.images['PVP'])") == []


def test_no_array_view_of_a_temporary_simpleitk_image_anywhere():
    found = []
    for folder in SOURCES:
        for path in sorted((REPO / folder).rglob("*.py")):
            found += views_of_temporaries(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert not found, f"use sitk.GetArrayFromImage (a copy) or keep the image in a variable: {found}"
