"""Every diff4mm_* command line in the README's and docs' shell blocks parses with that command's own parser
(issue #19: the commands a reader copies must take the flags written there). Cheap: argparse only, nothing runs;
the pipeline itself runs in the demo and, block as written, in tests/test_readme_pipeline.py."""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def console_scripts() -> dict[str, str]:
    """command -> module, from setup.py's entry points."""
    text = (ROOT / "setup.py").read_text(encoding="utf-8")
    return dict(re.findall(r'"(diff4mm_\w+)=([\w.]+):main"', text))


def shell_commands(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, argv) of every command in the file's ```bash blocks: continuation lines joined, `&&` chains
    split, comments dropped, NAME="..." assignments of the block expanded where $NAME is used."""
    out: list[tuple[int, list[str]]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    in_block, variables, pending, start = False, {}, "", 0
    for number, line in enumerate(lines, 1):
        if line.strip().startswith("```"):
            in_block, variables = line.strip() == "```bash", {}
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, pending = pending + line, ""
        for name, value in variables.items():
            text = text.replace(f"${name}", value)
        tokens = shlex.split(text, comments=True)
        assignment = re.fullmatch(r"([A-Za-z_]\w*)=(.*)", tokens[0]) if len(tokens) == 1 else None
        if assignment:
            variables[assignment.group(1)] = assignment.group(2)
            continue
        command: list[str] = []
        for token in [*tokens, "&&"]:
            if token == "&&":
                if command:
                    out.append((start, command))
                command = []
            else:
                command.append(token)
    return out


CASES = [(path.name, number, argv) for path in DOCS for number, argv in shell_commands(path)
         if argv[0].startswith("diff4mm_")]


def test_the_docs_show_the_pipeline_commands():
    shown = {argv[0] for _, _, argv in CASES}
    assert {"diff4mm_register", "diff4mm_train_inpainter", "diff4mm_inpaint", "diff4mm_train_synthesizer",
            "diff4mm_benchmark", "diff4mm_predict", "diff4mm_validate"} <= shown


@pytest.mark.parametrize("where,number,argv", CASES, ids=[f"{w}:{n}" for w, n, _ in CASES])
def test_every_documented_command_parses(where, number, argv, capsys):
    modules = console_scripts()
    assert argv[0] in modules, f"{where}:{number}: {argv[0]} is not a console script of setup.py"
    parser = importlib.import_module(modules[argv[0]]).build_parser()
    try:
        parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}:{number}: `{shlex.join(argv)}` does not parse: {capsys.readouterr().err.strip()}")
