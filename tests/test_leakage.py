"""No validation case reaches Diff4MMTrainer through its synthesis models: fold case lists and the leak check.

Real files, small: splits_final.json as nnU-Net writes it, bundle JSONs and normal.json records as the training
commands write them (the records are the only input of the check).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunetv2_diff4mm.splits import (SplitError, fold_cases, nnunet_default_splits, read_case_list,
                                     selected_training_cases)
from nnunetv2_diff4mm.training.leakage import ENV_ALLOW_LEAK, LeakError, check_models, refuse_leak

CASES = [f"case_{i:03d}" for i in range(10)]


def test_fold_cases_are_nnunets_split_and_it_is_written_when_missing(tmp_path):
    pre = tmp_path / "Dataset777_X"
    pre.mkdir()
    train, val = fold_cases(pre, 2, CASES)
    expected = nnunet_default_splits(CASES)[2]
    assert (train, val) == (sorted(expected["train"]), sorted(expected["val"]))
    assert len(val) == 2 and not set(train) & set(val) and set(train) | set(val) == set(CASES)
    assert json.loads((pre / "splits_final.json").read_text(encoding="utf-8")) == nnunet_default_splits(CASES)
    assert fold_cases(pre, "all", CASES) == (CASES, [])
    with pytest.raises(SplitError, match="no fold 5"):
        fold_cases(pre, 5, CASES)
    with pytest.raises(SplitError, match="'x'"):
        fold_cases(pre, "x", CASES)
    first = fold_cases(pre, 0, CASES)[0][0]
    with pytest.raises(SplitError, match=f"{first}, which has no label"):
        fold_cases(pre, 0, [c for c in CASES if c != first])  # the split belongs to a dataset with one more case
    with pytest.raises(SplitError, match="run nnUNetv2_plan_and_preprocess"):
        fold_cases(tmp_path / "Dataset778_Y", 0, CASES)


def test_selected_training_cases_from_a_fold_or_a_list(tmp_path, monkeypatch):
    raw = tmp_path / "raw" / "Dataset777_X"
    (tmp_path / "pre" / raw.name).mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    assert selected_training_cases(raw, CASES) is None
    assert selected_training_cases(raw, CASES, fold="1") == fold_cases(tmp_path / "pre" / raw.name, 1, CASES)[0]
    listed = tmp_path / "cases.txt"
    listed.write_text("# my cases\ncase_004\n\ncase_001\ncase_004\n", encoding="utf-8")
    assert read_case_list(listed) == ["case_004", "case_001", "case_004"]
    assert selected_training_cases(raw, CASES, cases_file=listed) == ["case_001", "case_004"]
    with pytest.raises(SplitError, match="at most one"):
        selected_training_cases(raw, CASES, fold="0", cases_file=listed)
    monkeypatch.delenv("nnUNet_preprocessed")
    with pytest.raises(SplitError, match="nnUNet_preprocessed is not set"):
        selected_training_cases(raw, CASES, fold="0")


def _bundle(folder: Path, lineage) -> Path:
    folder.mkdir(parents=True)
    training = {"cases": sorted(lineage or []), "lineage_cases": lineage}
    (folder / "diff4mm_bundle.json").write_text(json.dumps({"training": training}), encoding="utf-8")
    return folder


def _normal(folder: Path, settings: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "normal.json").write_text(json.dumps({"settings": settings, "cases": {}}), encoding="utf-8")
    return folder


def test_leak_check_names_the_model_and_the_cases(tmp_path, monkeypatch):
    val = ["case_008", "case_009"]
    clean_bundle = _bundle(tmp_path / "b_clean", CASES[:8])
    leaky_bundle = _bundle(tmp_path / "b_leak", CASES)
    old_bundle = _bundle(tmp_path / "b_old", None)  # written before bundles recorded their lineage
    classical = _normal(tmp_path / "n_classical", {"method": "classical:median+noise"})
    learned = _normal(tmp_path / "n_learned", {"method": "model:abc", "inpainter_cases": CASES[:8]})
    leaky_normal = _normal(tmp_path / "n_leak", {"method": "model:abc", "inpainter_cases": CASES[3:]})
    unknown_normal = _normal(tmp_path / "n_unknown", {"method": "model:abc"})

    assert check_models(clean_bundle, classical, val).clean
    assert check_models(clean_bundle, learned, val).clean
    report = check_models(leaky_bundle, leaky_normal, val)
    assert report.leaked == {str(leaky_bundle): val, str(leaky_normal): val} and not report.unknown
    report = check_models(old_bundle, unknown_normal, val)
    assert report.unknown == [str(old_bundle), str(unknown_normal)] and not report.clean

    monkeypatch.delenv(ENV_ALLOW_LEAK, raising=False)
    assert refuse_leak(clean_bundle, learned, val, 0).clean
    with pytest.raises(LeakError) as err:
        refuse_leak(leaky_bundle, learned, val, 3)
    message = str(err.value)
    assert "\n" not in message and str(leaky_bundle) in message and "case_008, case_009" in message
    assert "fold 3" in message and "-f 3" in message and ENV_ALLOW_LEAK in message
    logged = []
    monkeypatch.setenv(ENV_ALLOW_LEAK, "1")
    assert not refuse_leak(leaky_bundle, learned, val, 3, log=logged.append).clean
    assert len(logged) == 1 and "WARNING" in logged[0] and "case_008" in logged[0]
