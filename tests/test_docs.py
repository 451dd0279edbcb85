"""The documented API examples run: docs/api.md's synthesizer and pipeline blocks, against a tiny bundle."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from nnunetv2_diff4mm.cli import train_synthesizer as train_cli

from registered_phantom import write_registered_phantom

API_MD = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _doc_block(marker: str) -> str:
    """The first ```python block after the line `<!-- doc-test: MARKER ...-->` of docs/api.md."""
    text = API_MD.read_text(encoding="utf-8")
    match = re.search(rf"<!-- doc-test: {marker}\b[^>]*-->\s*```python\n(.*?)\n```", text, re.S)
    assert match, f"{API_MD}: no ```python block marked <!-- doc-test: {marker} -->"
    return match.group(1)


def test_api_md_synthesizer_and_pipeline_examples_run(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        raw = tmp_path / "nnUNet_raw"
        dataset = raw / "Dataset501_Liver"  # the examples' paths, relative to the working directory
        write_registered_phantom(dataset, 1)
        monkeypatch.setenv("nnUNet_raw", str(raw))
        monkeypatch.setenv("nnUNet_results", str(tmp_path / "nnUNet_results"))
        monkeypatch.delenv("DIFF4MM_BUNDLE", raising=False)
        monkeypatch.delenv("DIFF4MM_NORMAL_DIR", raising=False)
        # no -o: the default location, $nnUNet_results/Dataset501_Liver/diff4mm/synthesizer, which the docs use
        assert train_cli.main(["-d", "501", "--preset", "tiny", "--epochs", "1", "--device", "cpu"]) == 0
        bundle = tmp_path / "nnUNet_results" / dataset.name / "diff4mm" / "synthesizer"
        assert (bundle / "diff4mm_bundle.json").is_file()
        monkeypatch.chdir(raw)

        scope: dict = {"__name__": "docs_api_synthesizer"}
        exec(compile(_doc_block("synthesizer"), f"{API_MD}:synthesizer", "exec"), scope)
        mask, image_hu, label, normal_hu = scope["mask"], scope["image_hu"], scope["label"], scope["normal_hu"]
        assert mask.any() and (label[mask] == 2).all() and not (label == 2)[~mask].any()
        painted = (image_hu - normal_hu)[:, mask].mean(axis=1)  # match_enhancement: exactly the asked pattern
        wanted = [scope["pattern"][p] for p in scope["synth"].phases]
        np.testing.assert_allclose(painted, wanted, atol=0.5)
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "case_000_synthetic.nii.gz")))
        np.testing.assert_array_equal(written, label)

        scope = {"__name__": "docs_api_pipeline"}
        exec(compile(_doc_block("pipeline"), f"{API_MD}:pipeline", "exec"), scope)
        n = scope["n"]
        assert tuple(scope["roi"].shape) == (1, len(scope["phases"]), n, n, n)
        assert float(scope["roi"].abs().max()) <= 1.0
    finally:
        torch.set_num_threads(threads)
