"""Every ``diff4mm_*`` command speaks the same shared flags (issue #19): ``--version``, ``--help``, ``-device``
(nnU-Net's spelling, ``--device`` kept) where it has a device, ``--debug``; ``--help`` does not load torch or
nnU-Net; input errors name what was found and the fix. In-process (build_parser / main), one subprocess."""
from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from registration.inputs import InputError, find_cases

ROOT = Path(__file__).resolve().parents[1]


def _console_scripts() -> dict[str, str]:
    """{command: module} from setup.py's console_scripts (read as text: setup.py runs setup() on import)."""
    found = re.findall(r'"(diff4mm_\w+)\s*=\s*([\w.]+):main"', (ROOT / "setup.py").read_text(encoding="utf-8"))
    assert found, "no diff4mm_* console scripts found in setup.py"
    return dict(found)


SCRIPTS = _console_scripts()


def _setup_version() -> str:
    return re.search(r'\bversion\s*=\s*"([^"]+)"', (ROOT / "setup.py").read_text(encoding="utf-8")).group(1)


def _exit_code(main, argv) -> int:
    try:
        result = main(argv)
    except SystemExit as stop:
        return 0 if stop.code is None else stop.code
    return result


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_every_command_has_version_help_debug_and_the_same_device_flags(command, capsys):
    module = importlib.import_module(SCRIPTS[command])
    capsys.readouterr()
    assert _exit_code(module.main, ["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"{command} {_setup_version()}"
    assert _exit_code(module.main, ["--help"]) == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith(f"usage: {command}") and "--version" in help_text and "--debug" in help_text

    options = module.build_parser()._option_string_actions
    assert {"--version", "--debug", "-h"} <= set(options)
    device = [flag for flag in ("-device", "--device") if flag in options]
    if device:  # nnU-Net's -device and the older --device, one option
        assert device == ["-device", "--device"] and options["-device"] is options["--device"]
        assert "--device also accepted" in options["-device"].help


def test_device_options_accept_nnunets_spelling():
    with_device = []
    for command, name in sorted(SCRIPTS.items()):
        parser = importlib.import_module(name).build_parser()
        if "-device" not in parser._option_string_actions:
            continue
        with_device.append(command)
        required = [a for a in parser._actions if a.required]
        required += [group._group_actions[0] for group in parser._mutually_exclusive_groups if group.required]
        # fill the required options and positionals with a placeholder; choices get their first value
        argv = []
        for action in required:
            value = str(action.choices[0]) if action.choices else "1"
            argv += [action.option_strings[0], value] if action.option_strings else [value]
        assert parser.parse_args([*argv, "-device", "cpu"]).device == "cpu"
        assert parser.parse_args([*argv, "--device", "cpu"]).device == "cpu"
    assert {"diff4mm_predict", "diff4mm_synthesize", "diff4mm_train_synthesizer", "diff4mm_inpaint",
            "diff4mm_train_inpainter", "diff4mm_benchmark"} <= set(with_device)


def _library_value(relative: str, name: str):
    """A module-level constant of a library file, read without importing it (torch / nnU-Net); dicts: the keys."""
    for node in ast.parse((ROOT / relative).read_text(encoding="utf-8")).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == name:
            if isinstance(node.value, ast.Dict):
                return tuple(ast.literal_eval(key) for key in node.value.keys)
            return ast.literal_eval(node.value)
    raise AssertionError(f"{relative}: no {name}")


def test_constants_mirrored_for_a_fast_help_match_the_library():
    from nnunetv2_diff4mm.cli import inpaint, plan_cpu, train_inpainter, train_synthesizer

    assert plan_cpu.CPU_PLANS_NAME == _library_value("nnunetv2_diff4mm/planning.py", "CPU_PLANS_NAME")
    assert train_synthesizer.PRESET_NAMES == _library_value("synthesis/training.py", "PRESETS")
    assert train_inpainter.PRESET_NAMES == _library_value("synthesis/inpainting/presets.py", "PRESETS")
    for cli, library in ((train_synthesizer, "synthesis/training.py"), (train_inpainter, "synthesis/inpainting/presets.py")):
        assert tuple(cli.LEGACY_PRESET_NAMES) == _library_value(library, "LEGACY_PRESET_NAMES")
        assert cli.LEGACY_PRESET_NAMES == {"default": "cpu"}
    assert inpaint.CLASSICAL_METHODS == _library_value("synthesis/inpainting/presets.py", "CLASSICAL_METHODS")
    assert inpaint.DEFAULT_DILATION_MM == _library_value("synthesis/inpainting/presets.py", "DEFAULT_DILATION_MM")


def test_help_loads_neither_torch_nor_nnunet_nor_scipy():
    """One real process: every command's parser and help text, and what that imported (scipy alone cost
    diff4mm_phantom --help 1.5 s; every --help now answers in well under a second)."""
    code = ("import importlib, sys\n"
            f"for name in {sorted(set(SCRIPTS.values()))!r}:\n"
            "    importlib.import_module(name).build_parser().format_help()\n"
            "print(sorted(n for n in ('torch', 'nnunetv2', 'diffusers', 'matplotlib', 'scipy') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _case(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"")  # names only: find_cases does not read the files
    return folder


def test_missing_phase_names_the_files_found_and_the_phases_option(tmp_path):
    files = ("NC.nii.gz", "ART.nii.gz", "PV.nii.gz", "DELAY.nii.gz", "label.nii.gz")
    _case(tmp_path / "IN" / "case_001", *files)
    with pytest.raises(InputError) as info:
        find_cases(tmp_path / "IN")  # default phases NC AP PVP DELAY
    line = str(info.value)
    assert "\n" not in line and line.startswith("case_001: missing phase AP")
    assert all(name in line for name in files)
    assert line.endswith("--phases NC ART PV DELAY")  # the stems, the known ones kept in their place
    assert find_cases(tmp_path / "IN", phases=("NC", "ART", "PV", "DELAY"), reference="PV")  # the fix works


def test_dataset_or_case_folder_where_the_input_folder_belongs_is_named(tmp_path):
    dataset = tmp_path / "Dataset501_Liver"
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "labelsTr").mkdir()
    (dataset / "dataset.json").write_text("{}", encoding="utf-8")
    with pytest.raises(InputError) as info:
        find_cases(dataset)
    line = str(info.value)
    assert "\n" not in line and "nnU-Net raw dataset folder" in line and "one sub-folder per case" in line

    case = _case(tmp_path / "case_001", "NC.nii.gz", "AP.nii.gz", "PVP.nii.gz", "DELAY.nii.gz")
    with pytest.raises(InputError, match="looks like one case folder; pass its parent folder"):
        find_cases(case)
    dicom_case = tmp_path / "dicom_case"
    for phase in ("NC", "AP", "PVP", "DELAY"):
        (dicom_case / phase).mkdir(parents=True)
    with pytest.raises(InputError, match="looks like one case folder"):
        find_cases(dicom_case)


def test_montage_names_a_dataset_folder_passed_as_the_case(tmp_path, capsys):
    from nnunetv2_diff4mm.cli import montage

    dataset = tmp_path / "Dataset501_Liver"
    (dataset / "imagesTr").mkdir(parents=True)
    capsys.readouterr()
    assert montage.main([str(dataset), "-o", str(tmp_path / "m.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nnU-Net raw dataset folder, not a case folder" in err


# dest of an option -> the spelling it must have (nnU-Net's where it has one)
SHARED_SPELLINGS = {"dataset": "-d", "dataset_id": "-d", "fold": "-f", "folds": "-f", "configuration": "-c",
                    "num_processes": "-np", "trainer": "-tr", "plans": "-p", "reference": "--reference",
                    "reference_phase": "--reference", "shard": "--shard"}


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_shared_options_have_one_spelling_in_every_command(command):
    parser = importlib.import_module(SCRIPTS[command]).build_parser()
    for action in parser._actions:
        if action.dest in SHARED_SPELLINGS and action.help != "==SUPPRESS==":
            assert SHARED_SPELLINGS[action.dest] in action.option_strings, (command, action.option_strings)
    short_n = parser._option_string_actions.get("-n")
    if short_n is not None and short_n.help != "==SUPPRESS==":  # -n is a dataset name, as in diff4mm_register
        assert short_n.dest == "name", command


@pytest.mark.parametrize("command", ["diff4mm_train_inpainter", "diff4mm_train_synthesizer", "diff4mm_benchmark",
                                     "diff4mm_demo"])
def test_one_preset_vocabulary_and_old_names_with_a_one_line_notice(command, capsys):
    """cpu and gpu mean the CPU-sized and GPU-sized setting in every command (tiny: tests; the benchmark adds
    evidence); the models' old "default" (= cpu) and the benchmark's old "default" (= gpu) still work for a
    release, with one line on stderr, and are not offered in --help."""
    parser = importlib.import_module(SCRIPTS[command]).build_parser()
    action = parser._option_string_actions["--preset"]
    offered = [c for c in action.choices if c != "default"]
    assert {"cpu", "gpu"} <= set(offered) <= {"tiny", "cpu", "gpu", "evidence"}
    assert action.default == "cpu"
    required = {"diff4mm_train_inpainter": ["-d", "1"], "diff4mm_train_synthesizer": ["-d", "1"],
                "diff4mm_benchmark": ["-d", "1", "--phantom", "p"], "diff4mm_demo": []}[command]
    for name in offered:
        assert parser.parse_args([*required, "--preset", name]).preset == name
    assert capsys.readouterr().err == ""
    if command == "diff4mm_demo":
        assert "default" not in action.choices
        return
    old = parser.parse_args([*required, "--preset", "default"]).preset
    assert old == ("gpu" if command == "diff4mm_benchmark" else "cpu")
    err = capsys.readouterr().err.strip()
    assert "--preset default is deprecated" in err and f"use --preset {old}" in err and "\n" not in err
    assert "default" not in parser.format_help().split("--preset", 1)[1].split("\n")[0]


def test_old_spellings_still_work_for_a_release_with_a_one_line_notice(capsys):
    from nnunetv2_diff4mm.cli import benchmark, synthesize

    args = synthesize.build_parser().parse_args(["-d", "501", "-n", "3", "-o", "out"])
    assert args.num_cases == 3 and args.bundle is None  # the bundle defaults to DATASET/diff4mm/synthesizer
    err = capsys.readouterr().err.strip()
    assert err.startswith("diff4mm_synthesize: note: -n is deprecated") and "--num-cases" in err and "\n" not in err
    args = benchmark.build_parser().parse_args(["-d", "501", "--phantom", "p", "--reference-phase", "AP", "-f", "0", "1"])
    assert args.reference_phase == "AP" and args.folds == [0, 1]
    assert "use --reference" in capsys.readouterr().err
    assert "--reference-phase" not in benchmark.build_parser().format_help()
