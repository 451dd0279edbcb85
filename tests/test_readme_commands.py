"""Every diff4mm_* command line in the README's and docs' shell blocks parses with that command's own parser
(issue #19: the commands a reader copies must take the flags written there). Cheap: argparse only, nothing runs;
the pipeline itself runs in the demo and, block as written, in tests/test_readme_pipeline.py."""
from __future__ import annotations

import importlib
import shlex

import pytest
from readme_blocks import DOCS, console_scripts, shell_commands


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
