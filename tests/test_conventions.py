"""Where the plugin's trained models go: nnUNet_results, as nnU-Net's own; version 0.1's location still found."""
from __future__ import annotations

import pytest

from nnunetv2_diff4mm import conventions


@pytest.fixture
def roots(tmp_path, monkeypatch):
    raw = tmp_path / "raw" / "Dataset777_Where"
    raw.mkdir(parents=True)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "res"))
    monkeypatch.delenv(conventions.ENV_BUNDLE, raising=False)
    conventions._NOTICED.clear()
    return raw, tmp_path / "res" / "Dataset777_Where" / "diff4mm"


def test_models_default_to_nnunet_results_and_normal_cts_stay_in_raw(roots, capsys):
    raw, models = roots
    assert conventions.inpainter_folder(raw) == models / "inpainter"
    assert conventions.bundle_folder(raw, 3) == models / "synthesizer_fold3"
    assert conventions.normal_folder(raw, 3) == raw / "diff4mm" / "normal_fold3"
    assert conventions.bundle_folder(raw, 0, results_root=raw.parent / "other") == (
        raw.parent / "other" / raw.name / "diff4mm" / "synthesizer_fold0")
    assert capsys.readouterr().err == ""


def test_a_version_01_model_in_raw_is_still_found_with_one_notice(roots, capsys):
    raw, models = roots
    legacy = raw / "diff4mm" / "synthesizer_fold0"
    legacy.mkdir(parents=True)
    assert conventions.bundle_folder(raw, 0) == legacy
    assert conventions.fold_or_shared(conventions.bundle_folder, raw, 0) == legacy
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"Diff4MM: using {legacy}") and str(models / "synthesizer_fold0") in err
    assert "\n" not in err  # one line, once per folder
    (models / "synthesizer_fold0").mkdir(parents=True)  # once moved (or retrained), the new location wins
    assert conventions.bundle_folder(raw, 0) == models / "synthesizer_fold0"


def test_unset_nnunet_results_names_the_variable_and_the_way_out(roots, monkeypatch):
    raw, _ = roots
    monkeypatch.delenv("nnUNet_results")
    with pytest.raises(RuntimeError, match=r"nnUNet_results is not set: .*Dataset777_Where/diff4mm.* -o/--output"):
        conventions.inpainter_folder(raw)
    (raw / "diff4mm" / "inpainter").mkdir(parents=True)  # a version-0.1 model needs no nnUNet_results
    assert conventions.inpainter_folder(raw) == raw / "diff4mm" / "inpainter"
