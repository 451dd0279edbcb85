"""The synthesis bundle as a diffusers pipeline folder (issue #17): `TumorSynthesisPipeline.from_pretrained` /
`save_pretrained`, the output dataclass, and format-1/2 bundles (no model_index.json) that still load."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from nnunetv2_diff4mm.cli import train_synthesizer as train_cli
from synthesis.bundle import BUNDLE_JSON, MODEL_INDEX, BundleError, load_bundle
from synthesis.models.conditional_unet import MaskConditionedUNet
from synthesis.models.roi_autoencoder import ROIAutoencoderKL
from synthesis.pipeline import Synthesizer, TumorSynthesisPipeline, TumorSynthesisPipelineOutput
from registered_phantom import write_registered_phantom


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    raw = tmp_path_factory.mktemp("nnUNet_raw")
    write_registered_phantom(raw / "Dataset990_SynTest", 2)
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_raw", str(raw))
        assert train_cli.main(["-d", "990", "-o", str(out), "--preset", "tiny", "--epochs", "1",
                               "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def rois(bundle):
    """Two normal ROIs in [-1, 1] and their tumor conditions (a ball; mask + mask x pattern)."""
    info = json.loads((bundle / BUNDLE_JSON).read_text(encoding="utf-8"))
    n, channels = info["roi_size_vox"], len(info["phases"])
    rng = np.random.default_rng(0)
    normal = rng.uniform(-0.3, 0.3, (2, channels, n, n, n)).astype(np.float32)
    zz, yy, xx = np.indices((n, n, n)) - n / 2
    ball = (zz ** 2 + yy ** 2 + xx ** 2 <= (n / 4) ** 2).astype(np.float32)
    pattern = np.array([0.1, 0.5, -0.3, -0.2], np.float32)[:channels]
    condition = np.concatenate([ball[None], ball[None] * pattern[:, None, None, None]])
    return normal, np.stack([condition, condition])


def _sample(pipe, rois, seed=3, **kwargs):
    normal, condition = rois
    return pipe(torch.from_numpy(normal), torch.from_numpy(condition), num_inference_steps=3,
                generator=torch.Generator("cpu").manual_seed(seed), **kwargs)


def test_a_fresh_bundle_is_a_diffusers_pipeline_folder_that_loads_and_samples(bundle, rois):
    index = json.loads((bundle / MODEL_INDEX).read_text(encoding="utf-8"))
    assert index["_class_name"] == "TumorSynthesisPipeline"
    assert index["autoencoder"] == ["synthesis.models.roi_autoencoder", "ROIAutoencoderKL"]
    assert index["unet"] == ["synthesis.models.conditional_unet", "MaskConditionedUNet"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    info = json.loads((bundle / BUNDLE_JSON).read_text(encoding="utf-8"))
    assert info["format_version"] == 3 and MODEL_INDEX in info["files"]

    pipe = TumorSynthesisPipeline.from_pretrained(bundle)
    assert isinstance(pipe.autoencoder, ROIAutoencoderKL) and isinstance(pipe.unet, MaskConditionedUNet)
    assert isinstance(pipe.scheduler, DDIMScheduler) and not pipe.unet.training
    pipe.set_progress_bar_config(disable=True)
    out = _sample(pipe, rois)
    assert isinstance(out, TumorSynthesisPipelineOutput) and out.images.shape == rois[0].shape
    assert torch.isfinite(out.images).all() and out.images.abs().max() <= 1.0
    # the tuple path of diffusers pipelines, and the same numbers as the Synthesizer's (load_bundle) pipeline
    as_tuple = _sample(pipe, rois, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and torch.equal(as_tuple[0], out.images)
    synth = Synthesizer.from_bundle(bundle)
    np.testing.assert_array_equal(synth.pipeline(torch.from_numpy(rois[0]), torch.from_numpy(rois[1]),
                                                 num_inference_steps=3,
                                                 generator=torch.Generator("cpu").manual_seed(3)).images.numpy(),
                                  out.images.numpy())
    assert _sample(pipe, rois, output_type="difference").images.shape == rois[0].shape


def test_save_pretrained_round_trips_bit_identically_without_local_paths(bundle, rois, tmp_path):
    pipe = TumorSynthesisPipeline.from_pretrained(bundle)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "saved")
    files = sorted(p.relative_to(tmp_path / "saved").as_posix() for p in (tmp_path / "saved").rglob("*")
                   if p.is_file())
    assert MODEL_INDEX in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert {f for f in files if f.endswith(".safetensors")} == {f"{c}/diffusion_pytorch_model.safetensors"
                                                                for c in ("autoencoder", "unet")}
    for f in files:
        if f.endswith(".json"):
            assert "_name_or_path" not in json.loads((tmp_path / "saved" / f).read_text(encoding="utf-8")), f
    # the component configs equal the bundle's: saving a loaded pipeline writes no local path
    for f in ("autoencoder/config.json", "unet/config.json", "scheduler/scheduler_config.json"):
        assert (tmp_path / "saved" / f).read_bytes() == (bundle / f).read_bytes(), f
    again = TumorSynthesisPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    assert torch.equal(_sample(again, rois).images, _sample(pipe, rois).images)
    with pytest.raises(ValueError, match="safetensors only"):
        pipe.save_pretrained(tmp_path / "pickled", safe_serialization=False)


def _as_old_bundle(bundle, folder, version=2):
    """A bundle as format versions 1/2 wrote it: no model_index.json, not listed."""
    shutil.copytree(bundle, folder)
    (folder / MODEL_INDEX).unlink()
    config = json.loads((folder / BUNDLE_JSON).read_text(encoding="utf-8"))
    config["format_version"] = version
    del config["files"][MODEL_INDEX]
    (folder / BUNDLE_JSON).write_text(json.dumps(config), encoding="utf-8")
    return config


def test_a_bundle_without_model_index_still_loads_and_samples_the_same(bundle, rois, tmp_path):
    old = tmp_path / "old"
    _as_old_bundle(bundle, old)
    new_synth, old_synth = Synthesizer.from_bundle(bundle), Synthesizer.from_bundle(old)
    assert load_bundle(old).info["format_version"] == 2
    np.testing.assert_array_equal(old_synth.synthesize_rois(*rois, seed=5, num_inference_steps=3),
                                  new_synth.synthesize_rois(*rois, seed=5, num_inference_steps=3))
    # from_pretrained falls back to load_bundle for such a bundle
    pipe = TumorSynthesisPipeline.from_pretrained(old)
    pipe.set_progress_bar_config(disable=True)
    new = TumorSynthesisPipeline.from_pretrained(bundle)
    new.set_progress_bar_config(disable=True)
    assert torch.equal(_sample(pipe, rois).images, _sample(new, rois).images)
    with pytest.raises(BundleError, match="format-2 bundle .*re-save it with synthesis.bundle.save_bundle"):
        TumorSynthesisPipeline.from_pretrained(old, device_map="cpu")


def test_the_model_index_is_covered_by_the_bundle_hashes(bundle, tmp_path):
    old = tmp_path / "old"
    _as_old_bundle(bundle, old)
    shutil.copy(bundle / MODEL_INDEX, old / MODEL_INDEX)  # added to an old bundle, unlisted: refused
    with pytest.raises(BundleError, match="model_index.json: not listed"):
        load_bundle(old)
    with pytest.raises(BundleError, match="model_index.json: not listed"):
        TumorSynthesisPipeline.from_pretrained(old)

    edited = tmp_path / "edited"
    shutil.copytree(bundle, edited)
    index = json.loads((edited / MODEL_INDEX).read_text(encoding="utf-8"))
    index["unet"] = ["diffusers", "UNet2DModel"]
    (edited / MODEL_INDEX).write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(BundleError, match="model_index.json: sha256 mismatch"):
        TumorSynthesisPipeline.from_pretrained(edited)

    (edited / MODEL_INDEX).unlink()  # format 3 without its index
    with pytest.raises(BundleError, match="model_index.json: missing file"):
        load_bundle(edited)
    config = json.loads((edited / BUNDLE_JSON).read_text(encoding="utf-8"))
    del config["files"][MODEL_INDEX]
    (edited / BUNDLE_JSON).write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(BundleError, match="format_version 3 but model_index.json is not listed"):
        load_bundle(edited)

    with pytest.raises(BundleError, match="local folders only"):
        TumorSynthesisPipeline.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="neither a synthesis bundle"):
        TumorSynthesisPipeline.from_pretrained(tmp_path)
