"""Stage 3 (tumor synthesis): ROI resampling, feathered blending, bundle I/O and the Synthesizer, on a tiny bundle
trained for one epoch on two phantom cases (through the CLI, from an nnU-Net raw dataset)."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file
from scipy import ndimage

from nnunetv2_diff4mm.cli import synthesize as synthesize_cli
from nnunetv2_diff4mm.cli import train_synthesizer as train_cli
from nnunetv2_diff4mm.phantom import PHASES
from registered_phantom import write_registered_phantom
from synthesis.bundle import BUNDLE_JSON, BundleError, load_bundle, save_bundle
from synthesis.dataset_io import load_case
from synthesis.pipeline import Synthesizer
from synthesis.roi import ROISpec, add_change, blend, extract_roi, feather_weight, roi_box, roi_to_case


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnUNet_raw")
    write_registered_phantom(root / "Dataset990_SynTest", 2)
    return root


@pytest.fixture(scope="module")
def bundle(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_raw", str(raw))
        assert train_cli.main(["-d", "990", "-o", str(out), "--preset", "tiny", "--epochs", "1",
                               "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def case(raw):
    target, normal, label, liver = load_case(raw / "Dataset990_SynTest", "case_000")
    normal_hu = np.stack([sitk.GetArrayFromImage(normal[p]).astype(np.float32) for p in PHASES])
    return normal_hu, label.GetSpacing(), sitk.GetArrayFromImage(liver) > 0


# ---- enhancement patterns (no model) --------------------------------------------------------------------------

def test_enhancement_patterns_are_measured_per_tumor_rasterised_and_drawn_by_size():
    from synthesis.enhancement import (ENHANCEMENT_UNIT_HU, EnhancementBank, measure_patterns, resampled_condition,
                                       roi_condition)
    from synthesis.tumor_masks import label_tumors

    # two tumors 2 voxels apart at 0.8 x 0.8 x 2.5 mm: on a 3 mm grid their resampled fractions touch
    shape, spacing = (24, 60, 60), (0.8, 0.8, 2.5)
    zz, yy, xx = np.indices(shape)
    left = ((zz - 12) * 2.5) ** 2 + ((yy - 30) * 0.8) ** 2 + ((xx - 20) * 0.8) ** 2 <= 25
    right = ((zz - 12) * 2.5) ** 2 + ((yy - 30) * 0.8) ** 2 + ((xx - 34) * 0.8) ** 2 <= 25
    hyper, hypo = np.array([-5, 30, -10, -12], np.float32), np.array([-8, -10, -35, -20], np.float32)
    change = np.random.default_rng(0).normal(0, 3, (4, *shape)).astype(np.float32)
    change[:, left] += hyper[:, None]
    change[:, right] += hypo[:, None]
    tumors, n = label_tumors(left | right)
    assert n == 2
    patterns = measure_patterns(iter(change), tumors, n)  # one phase at a time, as training passes them
    order = [tumors[12, 30, 20] - 1, tumors[12, 30, 34] - 1]
    np.testing.assert_allclose(patterns[order], np.stack([hyper, hypo]), atol=1.0)

    spec = ROISpec(16, 3.0)
    roi = roi_condition(tumors, patterns, spacing, (12, 30, 27), spec)
    assert roi.shape == (5, 16, 16, 16)
    # channel 0 is the resampled mask; the others each tumor's own fraction x its own pattern
    only = [extract_roi(m.astype(np.float32), spacing, (12, 30, 27), spec) for m in (left, right)]
    np.testing.assert_allclose(roi[0], extract_roi((left | right).astype(np.float32), spacing, (12, 30, 27), spec),
                               atol=1e-5)
    expected = sum(f[None] * patterns[k][:, None, None, None] for f, k in zip(only, order)) / ENHANCEMENT_UNIT_HU
    np.testing.assert_allclose(roi[1:], expected, atol=1e-5)
    assert ((only[0] > 0) & (only[1] > 0)).any()  # the fractions overlap, yet no voxel mixes the patterns wrongly
    # a grid outside every tumor, or a case without tumors, carries no condition
    assert not resampled_condition(tumors, patterns, (0, 0, 0), (1, 1, 1), (4, 4, 4)).any()
    none = resampled_condition(np.zeros(shape, int), measure_patterns(change, np.zeros(shape, int), 0), (0, 0, 0),
                               (1, 1, 1), (4, 4, 4))
    assert none.shape == (5, 4, 4, 4) and not none.any()

    bank = EnhancementBank([[0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 3], [0, 0, 0, 40], [0, 0, 0, 50],
                            [0, 0, 0, 60]], [5.0, 6.0, 7.0, 30.0, 35.0, 40.0])
    draws = {float(bank.draw(6.5, np.random.default_rng(i))[3]) for i in range(40)}
    assert draws == {1.0, 2.0, 3.0}  # the 3 nearest in size, each drawn
    assert EnhancementBank.from_json(bank.to_json()) == bank
    for patterns_hu, diameters in (([[1, 2, 3, 4], [1, 2, 3]], [5.0, 6.0]), ([[1, 2, 3, np.nan]], [5.0]),
                                   ([[1, 2, 3, 4]], [0.0]), ([], [])):
        with pytest.raises(ValueError, match="enhancement bank"):
            EnhancementBank(patterns_hu, diameters)


# ---- ROI geometry (no model) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", [(0.8, 0.8, 2.5), (3.0, 3.0, 5.0)])
def test_roi_resampling_round_trips_and_keeps_physical_scale(spacing):
    spec = ROISpec(32, 3.0)
    shape = [int(200 / s) for s in spacing[::-1]]
    zz, yy, xx = (np.arange(n) * s for n, s in zip(shape, spacing[::-1]))
    Z, Y, X = np.meshgrid(zz, yy, xx, indexing="ij")
    centre_mm = np.array([100.0, 100.0, 100.0])
    volume = (50 * np.sin(Z / 15) + 40 * np.cos(Y / 11) + 30 * np.sin(X / 13)).astype(np.float32)
    sphere = ((Z - 100) ** 2 + (Y - 100) ** 2 + (X - 100) ** 2 < 15.0 ** 2).astype(np.float32)
    centre = centre_mm / np.asarray(spacing[::-1])
    roi = extract_roi(np.stack([volume, sphere]), spacing, centre, spec)
    assert roi.shape == (2, 32, 32, 32)
    # a 30 mm sphere covers the same number of ROI voxels whatever the scan's voxel size
    assert roi[1].sum() * 27.0 == pytest.approx(4 / 3 * np.pi * 15.0 ** 3, rel=0.08)
    box = roi_box(volume.shape, spacing, centre, spec)
    back = roi_to_case(roi[0], spacing, centre, spec, box)
    err = np.abs(back - volume[box])
    assert err.mean() < 1.5 and err.max() < 6.0  # smooth field, values +-120: linear interpolation error only


def test_feathered_blend_leaves_everything_outside_the_margin_untouched():
    mask = np.zeros((20, 20, 20), bool)
    mask[8:12, 8:12, 8:12] = True
    w = feather_weight(mask, (2.0, 2.0, 2.0), margin_mm=4.0)
    assert (w[mask] == 1).all() and w[0, 0, 0] == 0
    assert w[10, 10, 12] == 0.5 and w[10, 10, 13] == 0  # 2 mm from the mask: 0.5; 4 mm: 0
    normal = np.random.default_rng(0).normal(size=(2, 20, 20, 20)).astype(np.float32)
    out = normal.copy()
    box = (slice(2, 18),) * 3
    blend(out, np.full((2, 16, 16, 16), 100.0, np.float32), w[box], box)
    assert np.array_equal(out[:, w == 0], normal[:, w == 0])
    assert np.all(out[:, mask] == 100.0)
    out = normal.copy()
    add_change(out, np.full((2, 16, 16, 16), -30.0, np.float32), w[box], box)
    assert np.array_equal(out[:, w == 0], normal[:, w == 0])
    assert np.allclose(out[:, mask], normal[:, mask] - 30.0)


# ---- bundle -----------------------------------------------------------------------------------------------------

def test_bundle_holds_only_safetensors_and_reloads_bit_identically(bundle, tmp_path, monkeypatch):
    weights = [p for p in bundle.rglob("*") if p.is_file() and p.parent.name in ("autoencoder", "unet", "scheduler")]
    assert {p.suffix for p in weights} == {".json", ".safetensors"}

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load (pickle) used to load a bundle")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_bundle(bundle)
    for name in ("autoencoder", "unet"):
        stored = load_file(bundle / name / "diffusion_pytorch_model.safetensors")
        state = getattr(loaded, name).state_dict()
        assert stored.keys() == state.keys()
        assert all(torch.equal(stored[k], state[k]) for k in stored)
    copy = save_bundle(tmp_path / "copy", autoencoder=loaded.autoencoder, unet=loaded.unet,
                       scheduler=loaded.scheduler, phases=loaded.phases, roi=loaded.roi,
                       intensity_window_hu=loaded.intensity_window_hu, blend_margin_mm=loaded.blend_margin_mm,
                       ddim_steps=loaded.ddim_steps, mask_distribution=loaded.mask_distribution,
                       enhancement_bank=loaded.enhancement_bank)
    again = load_bundle(copy)
    weight_hashes = {k: v for k, v in json.loads((copy / BUNDLE_JSON).read_text(encoding="utf-8"))["files"].items()
                     if k.endswith(".safetensors")}
    assert weight_hashes == {k: v for k, v in loaded.info["files"].items() if k.endswith(".safetensors")}
    for name in ("autoencoder", "unet"):
        a, b = getattr(loaded, name).state_dict(), getattr(again, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.mask_distribution == loaded.mask_distribution
    assert again.enhancement_bank == loaded.enhancement_bank and loaded.enhancement_bank.channels == 4


def test_corrupted_or_incomplete_bundle_raises_one_clear_line(bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch") as err:
        load_bundle(broken)
    assert str(weights) in str(err.value) and "\n" not in str(err.value)

    weights.unlink()
    with pytest.raises(BundleError, match="missing file"):
        load_bundle(broken)
    shutil.rmtree(broken / "scheduler")
    with pytest.raises(BundleError, match="scheduler: missing folder"):
        load_bundle(broken)
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_bundle(tmp_path / "nowhere")

    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    config = json.loads((old / BUNDLE_JSON).read_text(encoding="utf-8"))
    config["format_version"] = 0
    (old / BUNDLE_JSON).write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(BundleError, match="format_version 0"):
        load_bundle(old)

    config["format_version"] = 2
    bank = config["enhancement_bank"]
    config["enhancement_bank"] = None  # a UNet that takes enhancement patterns, without the patterns to draw
    (old / BUNDLE_JSON).write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(BundleError, match="takes enhancement patterns but the enhancement_bank is missing") as err:
        load_bundle(old)
    assert str(old / BUNDLE_JSON) in str(err.value)
    config["enhancement_bank"] = {**bank, "patterns_hu": [p[:3] for p in bank["patterns_hu"]]}  # 3 phases
    (old / BUNDLE_JSON).write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(BundleError, match="enhancement_bank has 3 phases, the UNet takes 4"):
        load_bundle(old)


def test_phase_mismatch_names_both_phase_lists(bundle):
    loaded = load_bundle(bundle)
    with pytest.raises(BundleError) as err:
        loaded.check_phases(["AP", "PVP"])
    assert "['NC', 'AP', 'PVP', 'DELAY']" in str(err.value) and "['AP', 'PVP']" in str(err.value)


def test_finished_training_is_not_repeated_and_other_settings_are_refused(bundle, raw, monkeypatch):
    from synthesis.training import train_synthesizer

    before = {p: p.stat().st_mtime_ns for p in bundle.rglob("*") if p.is_file()}
    monkeypatch.setenv("nnUNet_raw", str(raw))
    assert train_cli.main(["-d", "Dataset990_SynTest", "-o", str(bundle), "--preset", "tiny", "--epochs", "1",
                           "--device", "cpu"]) == 0
    assert {p: p.stat().st_mtime_ns for p in bundle.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match="other settings"):
        train_synthesizer([None], bundle, preset="tiny", epochs=1, seed=5, device="cpu")


def test_a_bundle_recorded_before_a_preset_field_existed_still_counts_as_finished(bundle, raw, tmp_path,
                                                                                 monkeypatch):
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    record = old / "training" / "settings.json"
    settings = json.loads(record.read_text(encoding="utf-8"))
    del settings["preset_values"]["prediction_type"]  # a field added later; its default is what the run used
    record.write_text(json.dumps(settings), encoding="utf-8")
    before = {p: p.stat().st_mtime_ns for p in old.rglob("*") if p.is_file()}
    monkeypatch.setenv("nnUNet_raw", str(raw))
    assert train_cli.main(["-d", "990", "-o", str(old), "--preset", "tiny", "--epochs", "1", "--device", "cpu"]) == 0
    assert {p: p.stat().st_mtime_ns for p in old.rglob("*") if p.is_file()} == before


def test_a_bundle_recorded_under_a_presets_old_name_still_counts_as_finished(bundle, raw, tmp_path, monkeypatch):
    """Presets were renamed to one vocabulary (issue #19: the old "default" is now "cpu"); a bundle whose record
    holds the old name is the same training, not one "with other settings"."""
    from synthesis import training

    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    record = old / "training" / "settings.json"
    settings = json.loads(record.read_text(encoding="utf-8"))
    assert settings["preset"] == "tiny"
    settings["preset"] = "tiny_old_name"
    record.write_text(json.dumps(settings), encoding="utf-8")
    before = {p: p.stat().st_mtime_ns for p in old.rglob("*") if p.is_file()}
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setitem(training.LEGACY_PRESET_NAMES, "tiny_old_name", "tiny")  # "default" -> "cpu", on tiny
    assert train_cli.main(["-d", "990", "-o", str(old), "--preset", "tiny", "--epochs", "1", "--device", "cpu"]) == 0
    assert {p: p.stat().st_mtime_ns for p in old.rglob("*") if p.is_file()} == before
    assert training.LEGACY_PRESET_NAMES["default"] == "cpu" and "default" not in training.PRESETS


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sampler_reads_the_training_target_the_way_training_defines_it(prediction_type):
    """A model that returns exactly the training target for the x0 it should produce must lead the bundle's
    DDIM sampler from pure noise to that x0: training and sampling agree on what the UNet predicts."""

    from synthesis.training import PRESETS, _training_target, make_noise_scheduler

    ddpm, ddim = make_noise_scheduler(prediction_type)
    assert ddim.config.prediction_type == prediction_type
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 3, 3, 3, generator=gen)
    x = torch.randn(x0.shape, generator=gen)
    alphas = ddpm.alphas_cumprod
    ddim.set_timesteps(20)
    for t in ddim.timesteps:
        a = alphas[t]
        noise = (x - a.sqrt() * x0) / (1 - a).sqrt()  # the noise that takes x0 to the current x
        x = ddim.step(_training_target(ddpm, x0, noise, t.reshape(1)), t, x, eta=0.0).prev_sample
    torch.testing.assert_close(x, x0, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        make_noise_scheduler("sample")
    with pytest.raises(ValueError, match="prediction_type"):  # a custom preset is refused before any training
        replace(PRESETS["tiny"], prediction_type="sample")


def test_diffusion_loss_weights_the_tumor_and_one_latent_voxel_around_it():
    """The tumor is ~1 % of a ROI's latent; the loss must not spend itself on the ~0 residual around it."""
    from synthesis.training import _diffusion_loss, _tumor_loss_weight

    mask = torch.zeros(2, 1, 6, 6, 6)
    mask[0, 0, 2, 3, 3] = 0.1  # a latent voxel holding a little tumor counts as tumor
    weight = _tumor_loss_weight(mask, 9.0)
    near = torch.zeros(6, 6, 6, dtype=torch.bool)
    near[1:4, 2:5, 2:5] = True
    assert torch.equal(weight[0, 0][near], torch.full((27,), 10.0))
    assert torch.equal(weight[0, 0][~near], torch.ones(int((~near).sum())))
    assert torch.equal(weight[1], torch.ones(1, 6, 6, 6))  # a tumor-free ROI keeps the plain loss
    assert torch.equal(_tumor_loss_weight(mask, 0.0), torch.ones_like(mask))
    zero = torch.zeros(2, 4, 6, 6, 6)
    at_tumor, far = zero.clone(), zero.clone()
    at_tumor[0, :, 2, 3, 3] = 1.0
    far[0, :, 5, 0, 0] = 1.0
    assert _diffusion_loss(zero, at_tumor, mask, 0.0) == _diffusion_loss(zero, far, mask, 0.0)  # plain MSE
    assert _diffusion_loss(zero, at_tumor, mask, 9.0) > 5 * _diffusion_loss(zero, far, mask, 9.0)


# ---- Synthesizer ------------------------------------------------------------------------------------------------

def test_sampling_is_reproducible_for_a_seed_and_differs_between_seeds(bundle, case):
    synth = Synthesizer.from_bundle(bundle)
    normal, spacing, liver = case
    a = synth(normal, spacing, liver, np.random.default_rng(1))
    b = synth(normal, spacing, liver, np.random.default_rng(1))
    c = synth(normal, spacing, liver, np.random.default_rng(2))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    image, label = a
    assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == normal.shape
    assert (label == 2).any() and not ((label == 2) & ~liver).any()
    assert np.array_equal(label > 0, liver | (label == 2))


def test_the_unet_gets_each_tumors_pattern_in_phase_order_and_it_steers_the_sample(bundle, case, monkeypatch):
    from synthesis.enhancement import ENHANCEMENT_UNIT_HU

    normal_hu, spacing, liver = case
    synth = Synthesizer.from_bundle(bundle)
    mask = synth.random_mask(liver, spacing, np.random.default_rng(3))
    pattern = np.array([-5.0, 30.0, -10.0, -12.0])
    conditions, real_synthesize = [], synth.synthesize_rois

    def record(normal_rois, mask_rois, *args, **kwargs):
        conditions.append(mask_rois)
        return real_synthesize(normal_rois, mask_rois, *args, **kwargs)

    monkeypatch.setattr(synth, "synthesize_rois", record)
    first = synth(normal_hu, spacing, liver, np.random.default_rng(4), mask=mask, enhancement_hu=pattern)[0]
    cond = conditions[0]
    assert cond.shape[1] == 5 and cond[:, 0].max() > 0.5
    np.testing.assert_allclose(cond[:, 1:], cond[:, :1] * (pattern / ENHANCEMENT_UNIT_HU)[None, :, None, None, None],
                               atol=1e-6)
    again = synth(normal_hu, spacing, liver, np.random.default_rng(4), mask=mask, enhancement_hu=pattern)[0]
    other = synth(normal_hu, spacing, liver, np.random.default_rng(4), mask=mask, enhancement_hu=-pattern)[0]
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    for wrong in ([1.0, 2.0], 3.0, [np.nan, 1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match="enhancement_hu must be"):
            synth(normal_hu, spacing, liver, np.random.default_rng(4), mask=mask, enhancement_hu=wrong)


def test_each_painted_tumor_has_the_mean_enhancement_it_was_asked_for(bundle, case):
    """A 1-epoch bundle paints a fraction of its pattern; matching makes the mean change per phase inside the
    tumor the pattern itself (docs/decisions.md, synthetic tumor fidelity) and keeps the texture around it."""
    normal_hu, spacing, liver = case
    zyx = np.asarray(spacing, float)[::-1]
    dist = ndimage.distance_transform_edt(liver, sampling=zyx)
    centre = np.unravel_index(np.argmax(dist), dist.shape)  # deepest liver point: a 6 mm ball stays inside
    grid = np.indices(liver.shape).transpose(1, 2, 3, 0)
    mask = (np.linalg.norm((grid - np.array(centre)) * zyx, axis=-1) <= 6.0) & liver
    pattern = np.array([-5.0, 30.0, -40.0, -12.0], np.float32)
    matched = Synthesizer.from_bundle(bundle)(normal_hu, spacing, liver, np.random.default_rng(0), mask=mask,
                                              enhancement_hu=pattern)[0]
    raw_paint = Synthesizer.from_bundle(bundle, match_enhancement=False)(
        normal_hu, spacing, liver, np.random.default_rng(0), mask=mask, enhancement_hu=pattern)[0]
    np.testing.assert_allclose((matched - normal_hu)[:, mask].mean(1), pattern, atol=0.05)
    assert np.abs((raw_paint - normal_hu)[:, mask].mean(1) - pattern).max() > 1.0
    # the deviation from the mean inside the tumor is the diffusion model's own, unchanged by the shift
    np.testing.assert_allclose((matched - raw_paint)[:, mask].std(1), 0.0, atol=1e-3)
    outside = mask.copy()
    outside[np.unravel_index(np.argmin(dist), dist.shape)] = True  # one voxel off the liver
    with pytest.raises(ValueError, match="1 voxels outside liver_mask"):
        Synthesizer.from_bundle(bundle)(normal_hu, spacing, liver, np.random.default_rng(0), mask=outside)


def test_a_mask_only_bundle_trains_loads_and_samples_without_patterns(raw, case, tmp_path):
    import synthesis.training as training
    from synthesis.dataset_io import load_training_cases

    names, cases = load_training_cases(raw / "Dataset990_SynTest")
    preset = replace(training.PRESETS["tiny"], enhancement_condition=False)
    out = training.train_synthesizer(cases, tmp_path / "mask_only", preset=preset, epochs=1, device="cpu",
                                     progress=False, case_names=names)
    loaded = load_bundle(out)
    assert loaded.enhancement_bank is None and loaded.unet.config.enhancement_channels == 0
    normal_hu, spacing, liver = case
    synth = Synthesizer(loaded)
    image, label = synth(normal_hu, spacing, liver, np.random.default_rng(0))
    assert (label == 2).any() and not np.array_equal(image, normal_hu)
    with pytest.raises(ValueError, match="conditioned on the mask alone"):
        synth(normal_hu, spacing, liver, np.random.default_rng(0), enhancement_hu=[0.0, 30.0, -10.0, -10.0])


def test_output_is_the_normal_ct_outside_the_blend_region_and_label_is_the_mask(bundle, case):
    synth = Synthesizer.from_bundle(bundle)
    normal, spacing, liver = case
    mask = synth.random_mask(liver, spacing, np.random.default_rng(4))
    image, label = synth(normal, spacing, liver, np.random.default_rng(4), mask=mask)
    assert np.array_equal(label == 2, mask)
    assert np.array_equal(label == 1, liver & ~mask)
    margin = synth.bundle.blend_margin_mm
    dist = ndimage.distance_transform_edt(~mask, sampling=np.asarray(spacing)[::-1])
    outside = dist >= margin
    assert np.array_equal(image[:, outside], normal[:, outside])
    assert not np.array_equal(image[:, mask], normal[:, mask])
    empty = synth(normal, spacing, liver, np.random.default_rng(0), mask=np.zeros_like(mask))
    assert np.array_equal(empty[0], normal) and np.array_equal(empty[1], liver.astype(np.uint8))
    with pytest.raises(ValueError, match="phases"):
        synth(normal[:2], spacing, liver, np.random.default_rng(0))


# ---- CLI --------------------------------------------------------------------------------------------------------

def test_synthesize_shards_then_the_final_run_give_the_unsharded_output_byte_for_byte(bundle, raw, tmp_path,
                                                                                     monkeypatch, capsys):
    """--shard I/N makes the cases i with i % N == I (seeded per case), writes no dataset.json; the final run
    without it completes the folder: the same bytes as one unsharded run."""
    import os
    import subprocess
    import sys

    monkeypatch.setenv("nnUNet_raw", str(raw))
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    common = [str(bundle), "-d", "990", "--num-cases", "3", "--seed", "2", "--device", "cpu"]
    assert synthesize_cli.main([*common, "-o", str(whole)]) == 0
    # shards are processes, as a scheduler starts them (threads would share diffusers' model-loading state)
    shards = [subprocess.Popen([sys.executable, "-m", "nnunetv2_diff4mm.cli.synthesize", *common, "-o", str(sharded),
                                "--shard", f"{i}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               encoding="utf-8", errors="replace", env={**os.environ, "OMP_NUM_THREADS": "1"})
              for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in shards]
    assert [p.returncode for p in shards] == [0, 0], [err[-1500:] for _, err in outputs]
    assert not (sharded / "dataset.json").exists() and "shard 0/2: 2 synthetic cases" in outputs[0][0]
    assert sorted(p.name for p in (sharded / "labelsTr").iterdir()) == [f"syn_{i:04d}.nii.gz" for i in range(3)]
    assert synthesize_cli.main([*common, "-o", str(sharded)]) == 0
    for sub in ("imagesTr", "labelsTr"):
        for f in sorted((whole / sub).iterdir()):
            assert (sharded / sub / f.name).read_bytes() == f.read_bytes(), f.name
    for name in ("dataset.json", "synthesis.json"):
        assert (sharded / name).read_text(encoding="utf-8") == (whole / name).read_text(encoding="utf-8")


def test_synthesize_cli_writes_a_raw_dataset_and_reports_bad_input(bundle, raw, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_raw", str(raw))
    out = tmp_path / "syn"
    assert synthesize_cli.main([str(bundle), "-d", "990", "-n", "3", "-o", str(out), "--seed", "1",
                                "--device", "cpu"]) == 0
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"syn_{i:04d}.nii.gz" for i in range(3)]
    assert len(list((out / "imagesTr").iterdir())) == 12 and len(list((out / "montages").glob("*.png"))) == 3
    dataset = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert dataset["numTraining"] == 3 and dataset["diff4mm"]["phases"] == list(PHASES)
    lab = sitk.ReadImage(str(out / "labelsTr" / "syn_0000.nii.gz"))
    img = sitk.ReadImage(str(out / "imagesTr" / "syn_0000_0002.nii.gz"))
    assert lab.GetSize() == img.GetSize() and set(np.unique(sitk.GetArrayFromImage(lab))) == {0, 1, 2}

    # --normal: only the labelled cases with a normal CT in that folder (a fold's normal_foldF) are painted into
    fold_normal = tmp_path / "normal_fold9"
    source = raw / "Dataset990_SynTest" / "diff4mm" / "normal"
    for sub in ("imagesTr", "labelsTr"):
        (fold_normal / sub).mkdir(parents=True)
        for f in (source / sub).glob("case_001*"):
            shutil.copy(f, fold_normal / sub / f.name)
    assert synthesize_cli.main([str(bundle), "-d", "990", "--num-cases", "2", "-o", str(tmp_path / "syn_fold"), "--normal",
                                str(fold_normal), "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "syn_fold" / "synthesis.json").read_text(encoding="utf-8"))
    assert [c["source"] for c in record["cases"]] == ["case_001", "case_001"]
    assert record["normal_dir"] == str(fold_normal.resolve())

    other = raw / "Dataset991_NoNormal"
    (other / "labelsTr").mkdir(parents=True)
    shutil.copy(raw / "Dataset990_SynTest" / "dataset.json", other / "dataset.json")
    shutil.copy(raw / "Dataset990_SynTest" / "labelsTr" / "case_000.nii.gz", other / "labelsTr")
    capsys.readouterr()
    assert synthesize_cli.main([str(bundle), "-d", "991", "--num-cases", "1", "-o", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("diff4mm_synthesize: error: ") and "diff4mm_inpaint" in err and err.count("\n") == 1

    phases = json.loads((other / "dataset.json").read_text(encoding="utf-8"))
    phases["diff4mm"]["phases"] = ["AP", "PVP"]
    (other / "dataset.json").write_text(json.dumps(phases), encoding="utf-8")
    assert synthesize_cli.main([str(bundle), "-d", "991", "--num-cases", "1", "-o", str(tmp_path / "y")]) == 1
    assert "['AP', 'PVP']" in capsys.readouterr().err
    assert synthesize_cli.main([str(tmp_path / "nobundle"), "-d", "990", "--num-cases", "1", "-o", str(tmp_path / "z")]) == 1
    assert "no such bundle folder" in capsys.readouterr().err
    assert train_cli.main(["-d", "777", "-o", str(tmp_path / "b")]) == 1
    assert "no dataset '777'" in capsys.readouterr().err


def test_synthesize_cli_paints_the_users_masks_with_the_users_pattern(bundle, raw, tmp_path, monkeypatch, capsys):
    """--masks DIR --pattern HU...: one case per mask, label = the mask, mean change per phase inside it = the
    pattern (int16 rounding aside); a mask that leaves the liver is refused naming the file, nothing written."""
    monkeypatch.setenv("nnUNet_raw", str(raw))
    dataset = raw / "Dataset990_SynTest"
    liver_image = sitk.ReadImage(str(dataset / "diff4mm/normal/labelsTr/case_001.nii.gz"))
    liver = sitk.GetArrayFromImage(liver_image) > 0
    zyx = np.asarray(liver_image.GetSpacing(), float)[::-1]
    dist = ndimage.distance_transform_edt(liver, sampling=zyx)
    centre = np.array(np.unravel_index(np.argmax(dist), dist.shape))
    ball = (np.linalg.norm((np.indices(liver.shape).transpose(1, 2, 3, 0) - centre) * zyx, axis=-1) <= 6.0) & liver
    masks = tmp_path / "masks"
    masks.mkdir()
    mask_image = sitk.GetImageFromArray(ball.astype(np.uint8))
    mask_image.CopyInformation(liver_image)
    sitk.WriteImage(mask_image, str(masks / "case_001.nii.gz"))
    pattern = [-5.0, 30.0, -40.0, -12.0]
    out = tmp_path / "syn_masks"
    assert synthesize_cli.main([str(bundle), "-d", "990", "--masks", str(masks), "--pattern", *map(str, pattern),
                                "-o", str(out), "-device", "cpu"]) == 0
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "syn_0000.nii.gz")))
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["syn_0000.nii.gz"]
    assert np.array_equal(label == 2, ball) and np.array_equal(label == 1, liver & ~ball)
    change = [(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / f"syn_0000_{k:04d}.nii.gz")))
               .astype(float) - sitk.GetArrayFromImage(sitk.ReadImage(
                   str(dataset / "diff4mm/normal/imagesTr" / f"case_001_{k:04d}.nii.gz"))))[ball].mean()
              for k in range(len(PHASES))]
    np.testing.assert_allclose(change, pattern, atol=0.6)  # both images stored as int16
    record = json.loads((out / "synthesis.json").read_text(encoding="utf-8"))
    assert record["cases"] == [{"case": "syn_0000", "source": "case_001", "mask": "case_001.nii.gz"}]
    assert record["enhancement_hu"] == pattern and record["masks_dir"] == str(masks.resolve())

    outside = ball.copy()
    outside[np.unravel_index(np.argmin(dist), dist.shape)] = True  # one voxel off the liver
    bad_image = sitk.GetImageFromArray(outside.astype(np.uint8))
    bad_image.CopyInformation(liver_image)
    sitk.WriteImage(bad_image, str(masks / "case_001.nii.gz"))
    capsys.readouterr()
    assert synthesize_cli.main([str(bundle), "-d", "990", "--masks", str(masks), "-o", str(tmp_path / "bad"),
                                "-device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "case_001.nii.gz: 1 tumor voxels lie outside case_001's liver" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
    assert synthesize_cli.main([str(bundle), "-d", "990", "--masks", str(masks), "--pattern", "1", "2",
                                "-o", str(tmp_path / "bad"), "-device", "cpu"]) == 1
    assert "one finite HU value per phase" in capsys.readouterr().err
    bad_image.SetSpacing([2 * v for v in liver_image.GetSpacing()])  # a mask on another grid
    sitk.WriteImage(bad_image, str(masks / "case_001.nii.gz"))
    assert synthesize_cli.main([str(bundle), "-d", "990", "--masks", str(masks), "-o", str(tmp_path / "bad"),
                                "-device", "cpu"]) == 1
    assert "not on the grid of case_001's normal CT" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_weights(raw, tmp_path, monkeypatch):
    import synthesis.training as training
    from synthesis.dataset_io import load_training_cases

    names, cases = load_training_cases(raw / "Dataset990_SynTest")
    kwargs = dict(preset="tiny", epochs=2, device="cpu", progress=False, case_names=names)
    reference = training.train_synthesizer(cases, tmp_path / "straight", **kwargs)

    real_validation, calls = training._unet_validation, []

    def crash_in_second_epoch(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_validation(*args, **kw)

    monkeypatch.setattr(training, "_unet_validation", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        training.train_synthesizer(cases, tmp_path / "resumed", **kwargs)
    assert json.loads((tmp_path / "resumed/training/progress.json").read_text(encoding="utf-8")) == {
        "autoencoder": 2, "unet": 1, "checkpoints": {"autoencoder": "autoencoder_epoch_0002", "unet": "unet_epoch_0001"}}
    # one checkpoint per stage is kept: the one the record names
    assert sorted(p.name for p in (tmp_path / "resumed/training/checkpoint").iterdir()) == [
        "autoencoder_epoch_0002", "unet_epoch_0001"]
    monkeypatch.setattr(training, "_unet_validation", real_validation)
    training.train_synthesizer(cases, tmp_path / "resumed", **kwargs)
    log = (tmp_path / "resumed/training/log.csv").read_text(encoding="utf-8").splitlines()
    assert [row.split(",")[:2] for row in log[1:]] == [["autoencoder", "1"], ["autoencoder", "2"], ["unet", "1"],
                                                        ["unet", "2"]]
    a, b = load_bundle(reference), load_bundle(tmp_path / "resumed")
    for name in ("autoencoder", "unet"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name

    # interrupted after the second UNet epoch's checkpoint was written but before progress.json recorded it (the
    # synthesizer used to overwrite its weights in place first: it then resumed epoch 1's count with epoch 2's
    # weights and trained a third epoch's worth); resumed, the bundle is still the uninterrupted one
    real_write = training.write_json_atomic

    def crash_before_recording_unet_epoch_2(path, data, *args, **kw):
        if Path(path).name == "progress.json" and data.get("unet") == 2:
            raise KeyboardInterrupt
        return real_write(path, data, *args, **kw)

    monkeypatch.setattr(training, "write_json_atomic", crash_before_recording_unet_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        training.train_synthesizer(cases, tmp_path / "cut", **kwargs)
    assert (tmp_path / "cut/training/checkpoint/unet_epoch_0002").is_dir()  # written, not recorded
    monkeypatch.setattr(training, "write_json_atomic", real_write)
    training.train_synthesizer(cases, tmp_path / "cut", **kwargs)
    c = load_bundle(tmp_path / "cut")
    for name in ("autoencoder", "unet"):
        sa, sc = getattr(a, name).state_dict(), getattr(c, name).state_dict()
        assert all(torch.equal(sa[k], sc[k]) for k in sa), name

