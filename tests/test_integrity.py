"""Issue #18, "nothing silently wrong, nothing lost": a model folder trained on other data is refused, not
reported as this run's; bad input is one line (``PROG: error: <file>: <what>; <fix>``) and exit 1, never a
traceback; bundle and inpainter hashes cover every file and configs hold no local paths.

One tiny bundle and one tiny inpainter are trained (through the CLIs) on a 2-case 4-phase phantom dataset A; a
3-phase dataset B (other phases) is the "someone else's folder" case.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path, PurePosixPath

import pytest
import torch

from nnunetv2_diff4mm.cli import inpaint as inpaint_cli
from nnunetv2_diff4mm.cli import synthesize as synthesize_cli
from nnunetv2_diff4mm.cli import train_inpainter as train_inpainter_cli
from nnunetv2_diff4mm.cli import train_synthesizer as train_cli
from nnunetv2_diff4mm.cli.errors import DEBUG_ENV
from nnunetv2_diff4mm.phantom import PHASES
from registered_phantom import write_registered_phantom
from synthesis.bundle import BUNDLE_JSON, BundleError, load_bundle
from synthesis.inpainting import MANIFEST_FILE, InpaintingError, load_inpainter

THREE = ["NC", "AP", "PVP"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnUNet_raw")
    write_registered_phantom(root / "Dataset980_FourPhases", 2, PHASES)
    write_registered_phantom(root / "Dataset981_ThreePhases", 2, THREE)
    return root


@pytest.fixture()
def env(raw, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    return raw


@pytest.fixture(scope="module")
def trained(raw, tmp_path_factory):
    """A tiny bundle and a tiny inpainter, each trained for one epoch on dataset A (980) through the CLIs."""
    root = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_raw", str(raw))
        assert train_cli.main(["-d", "980", "-o", str(root / "bundle"), "--preset", "tiny", "--epochs", "1",
                               "--device", "cpu"]) == 0
        assert train_inpainter_cli.main(["-d", "980", "-o", str(root / "inpainter"), "--preset", "tiny",
                                         "--epochs", "1", "--device", "cpu"]) == 0
    return root / "bundle", root / "inpainter"


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def _one_error_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


# ---- item 5: someone else's finished folder is refused, never reported as this run's ----------------------------

def test_synthesizer_refuses_a_bundle_finished_on_another_dataset(trained, env, capsys):
    bundle, _ = trained
    before = _mtimes(bundle)
    capsys.readouterr()
    assert train_cli.main(["-d", "981", "-o", str(bundle), "--preset", "tiny", "--epochs", "1",
                           "--device", "cpu"]) == 1
    line = _one_error_line(capsys, "diff4mm_train_synthesizer")
    assert str(bundle) in line and "source" in line  # the folder, and what differs (dataset and phases)
    assert _mtimes(bundle) == before  # nothing deleted, rewritten or retrained
    # the same command on the dataset it was trained on is the finished training: exit 0, nothing written
    assert train_cli.main(["-d", "980", "-o", str(bundle), "--preset", "tiny", "--epochs", "1",
                           "--device", "cpu"]) == 0
    assert _mtimes(bundle) == before


def test_inpainter_refuses_a_folder_trained_on_other_phases_or_cases(trained, env, tmp_path, capsys):
    _, inpainter = trained
    before = _mtimes(inpainter)
    capsys.readouterr()
    assert train_inpainter_cli.main(["-d", "981", "-o", str(inpainter), "--preset", "tiny", "--epochs", "1",
                                     "--device", "cpu"]) == 1
    line = _one_error_line(capsys, "diff4mm_train_inpainter")
    assert str(inpainter) in line and "phases" in line
    one_case = tmp_path / "cases.txt"
    one_case.write_text("case_000\n", encoding="utf-8")
    assert train_inpainter_cli.main(["-d", "980", "-o", str(inpainter), "--cases", str(one_case), "--preset",
                                     "tiny", "--epochs", "1", "--device", "cpu"]) == 1
    line = _one_error_line(capsys, "diff4mm_train_inpainter")
    assert str(inpainter) in line and "cases" in line
    assert _mtimes(inpainter) == before


# ---- item 9: one line, exit 1, no traceback ----------------------------------------------------------------------

def test_corrupt_synthesizer_settings_json_is_one_line_naming_it(env, tmp_path, capsys):
    folder = tmp_path / "bundle"
    (folder / "training").mkdir(parents=True)
    settings = folder / "training" / "settings.json"
    settings.write_text("{ not json", encoding="utf-8")
    capsys.readouterr()
    assert train_cli.main(["-d", "980", "-o", str(folder), "--preset", "tiny", "--epochs", "1",
                           "--device", "cpu"]) == 1
    line = _one_error_line(capsys, "diff4mm_train_synthesizer")
    assert f"{settings}: not valid JSON" in line and "; delete" in line
    assert settings.read_text(encoding="utf-8") == "{ not json"  # kept: the user decides


@pytest.mark.parametrize("dataset, expected", [("abc", "no dataset 'abc'"), ("777", "no dataset '777'")])
def test_unknown_dataset_is_one_line(env, dataset, expected, capsys):
    capsys.readouterr()
    for main, prog, extra in ((inpaint_cli.main, "diff4mm_inpaint", ["--method", "median"]),
                              (train_inpainter_cli.main, "diff4mm_train_inpainter", []),
                              (train_cli.main, "diff4mm_train_synthesizer", [])):
        assert main(["-d", dataset, *extra]) == 1
        assert expected in _one_error_line(capsys, prog)


def test_unset_nnunet_raw_is_named(env, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("nnUNet_raw")
    capsys.readouterr()
    for main, prog, args in ((inpaint_cli.main, "diff4mm_inpaint", ["-d", "980"]),
                             (train_inpainter_cli.main, "diff4mm_train_inpainter", ["-d", "980"]),
                             (train_cli.main, "diff4mm_train_synthesizer", ["-d", "980"]),
                             (synthesize_cli.main, "diff4mm_synthesize",
                              [str(tmp_path), "-d", "980", "--num-cases", "1", "-o", str(tmp_path / "o")])):
        assert main(args) == 1
        line = _one_error_line(capsys, prog)
        assert "nnUNet_raw" in line and "export nnUNet_raw=" in line


def test_bundle_json_whose_files_is_not_a_dict_is_one_line(trained, env, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(trained[0], bundle)
    config = json.loads((bundle / BUNDLE_JSON).read_text(encoding="utf-8"))
    config["files"] = sorted(config["files"])  # a list of names, no hashes
    (bundle / BUNDLE_JSON).write_text(json.dumps(config), encoding="utf-8")
    capsys.readouterr()
    assert synthesize_cli.main([str(bundle), "-d", "980", "--num-cases", "1", "-o", str(tmp_path / "syn"),
                                "--device", "cpu"]) == 1
    line = _one_error_line(capsys, "diff4mm_synthesize")
    assert f"{bundle / BUNDLE_JSON}: 'files' must map" in line
    assert not (tmp_path / "syn").exists()


def test_corrupt_synthesizer_optimizer_state_on_resume_is_one_line(trained, env, tmp_path, capsys):
    """An interrupted 2-epoch training (autoencoder epoch 1 done) whose optimizer state was truncated."""
    out = tmp_path / "resumed"
    work = out / "training"
    (work / "checkpoint").mkdir(parents=True)
    settings = json.loads((trained[0] / "training" / "settings.json").read_text(encoding="utf-8"))
    settings["preset_values"].update(ae_epochs=2, unet_epochs=2)  # what --epochs 2 stores
    (work / "settings.json").write_text(json.dumps(settings), encoding="utf-8")
    (work / "progress.json").write_text(json.dumps({"autoencoder": 1, "unet": 0}), encoding="utf-8")
    shutil.copytree(trained[0] / "autoencoder", work / "checkpoint" / "autoencoder")
    optimizer = work / "checkpoint" / "autoencoder_optimizer.pt"
    buffer = tmp_path / "full.pt"
    torch.save({"state": {}, "param_groups": []}, buffer)
    optimizer.write_bytes(buffer.read_bytes()[: buffer.stat().st_size // 2])  # cut off mid-write
    capsys.readouterr()
    args = ["-d", "980", "-o", str(out), "--preset", "tiny", "--epochs", "2", "--device", "cpu"]
    assert train_cli.main(args) == 1
    line = _one_error_line(capsys, "diff4mm_train_synthesizer")
    assert f"{optimizer}: cannot resume" in line and f"delete {work}" in line
    assert optimizer.exists() and not (out / BUNDLE_JSON).exists()
    # --debug (or DIFF4MM_DEBUG=1) shows the real traceback instead
    with pytest.raises(BundleError):
        train_cli.main([*args, "--debug"])


def test_rejected_inpainter_optimizer_state_on_resume_is_one_line(trained, env, tmp_path, capsys):
    """A finished 1-epoch inpainter asked for 2 epochs resumes from its last checkpoint, whose optimizer.pt holds
    a pickle torch.load(weights_only=True) rejects."""
    out = tmp_path / "inpainter"
    shutil.copytree(trained[1], out)
    state = json.loads((out / "training.json").read_text(encoding="utf-8"))
    optimizer = out / state["checkpoint"] / "optimizer.pt"
    torch.save({"state": {}, "param_groups": [], "not_allowed": PurePosixPath("x")}, optimizer)
    capsys.readouterr()
    assert train_inpainter_cli.main(["-d", "980", "-o", str(out), "--preset", "tiny", "--epochs", "2",
                                     "--device", "cpu"]) == 1
    line = _one_error_line(capsys, "diff4mm_train_inpainter")
    assert f"{optimizer}: cannot resume" in line and "delete" in line


# ---- item 11: hashes cover every file; no local paths in configs -------------------------------------------------

def test_an_unlisted_edited_bundle_config_is_refused(trained, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(trained[0], bundle)
    load_bundle(bundle)  # the copy loads
    config = json.loads((bundle / BUNDLE_JSON).read_text(encoding="utf-8"))
    del config["files"]["unet/config.json"]
    (bundle / BUNDLE_JSON).write_text(json.dumps(config), encoding="utf-8")
    unet_config = bundle / "unet" / "config.json"
    edited = json.loads(unet_config.read_text(encoding="utf-8"))
    edited["target_scale"] = 2 * float(edited["target_scale"])
    unet_config.write_text(json.dumps(edited), encoding="utf-8")
    with pytest.raises(BundleError, match="not listed in diff4mm_bundle.json") as err:
        load_bundle(bundle)
    assert str(unet_config) in str(err.value) and "\n" not in str(err.value)

    extra = tmp_path / "extra"
    shutil.copytree(trained[0], extra)
    (extra / "autoencoder" / "more.safetensors").write_bytes(b"x")
    with pytest.raises(BundleError, match="more.safetensors: not listed"):
        load_bundle(extra)


def test_a_tampered_inpainter_weight_is_refused(trained, tmp_path):
    model = tmp_path / "inpainter"
    shutil.copytree(trained[1] / "model", model)
    load_inpainter(model)
    weights = next(model.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InpaintingError, match="sha256 mismatch") as err:
        load_inpainter(model)
    assert str(weights) in str(err.value)
    (model / MANIFEST_FILE).unlink()
    with pytest.raises(InpaintingError, match=f"{MANIFEST_FILE}: missing"):
        load_inpainter(model)


def test_saved_configs_hold_no_local_path(trained, tmp_path):
    bundle, inpainter = trained
    configs = [*bundle.glob("*/*config.json"), *inpainter.rglob("config.json")]
    assert len(configs) >= 4
    for path in configs:
        assert "_name_or_path" not in json.loads(path.read_text(encoding="utf-8")), path
    # a model read back and saved again (what a resumed training does) writes the same config
    loaded = load_bundle(bundle)
    assert "_name_or_path" in loaded.unet.config  # diffusers adds it on from_pretrained
    from synthesis.bundle import without_local_path
    without_local_path(loaded.unet).save_pretrained(tmp_path / "unet", safe_serialization=True)
    assert (tmp_path / "unet" / "config.json").read_bytes() == (bundle / "unet" / "config.json").read_bytes()
    assert os.fspath(bundle) not in (tmp_path / "unet" / "config.json").read_text(encoding="utf-8")
