"""The shell commands of the README's and docs' ```bash blocks, as a reader copies them (a helper module for
tests/test_readme_commands.py and tests/test_readme_pipeline.py, not a test module)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

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
