"""Normal-CT generator: masks in mm, the FFC inpainter model, training/resume, tumor removal and fallbacks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from nnunetv2_diff4mm.phantom import PHASES, PhantomConfig, generate_case
from synthesis.inpainting import (CLASSICAL_METHODS, PRESETS, InpaintingError, fill_region, get_preset,
                                  inpaint_case, load_inpainter, train_inpainter)
from registration.masks import body_mask, dilate_mm
from synthesis.masks import random_liver_blob_masks
from synthesis.models import FFCInpainter
from synthesis.models.ffc_inpainter import FFC

COARSE = PhantomConfig(seed=0, spacing=(5.0, 5.0, 8.0))  # fast; sizes and margins are in mm anyway
CASE_WITH_TUMORS = 1  # a 68 mm hypervascular and a 33 mm hypovascular tumor at this seed
TINY = get_preset("tiny")


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def case():
    """(phases, label): the ground-truth aligned phases (= perfectly registered) of a coarse phantom case."""
    c = generate_case(COARSE, "train", CASE_WITH_TUMORS)
    return {p: c.ground_truth[f"{p}_aligned"] for p in PHASES}, c.ground_truth["label"]


@pytest.fixture(scope="module")
def trained(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("inpainter")
    model = train_inpainter([case], out, preset=TINY, epochs=3, steps_per_epoch=100, seed=0, progress=False)
    return out, model


def _healthy_range(phase_array: np.ndarray, label: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """Mean and std of healthy liver away from its edge (no partial volume with fat)."""
    from scipy import ndimage

    core = ndimage.binary_erosion(label == 1, iterations=1) & ~region & (phase_array > -200)  # in the phase's view
    return float(phase_array[core].mean()), float(phase_array[core].std())


# ----------------------------------------------------------------------------------------------- masks


def test_dilation_is_euclidean_in_mm_on_an_anisotropic_grid():
    spacing = (1.5, 1.0, 3.0)  # x, y, z mm
    arr = np.zeros((11, 17, 13), np.uint8)
    centre = (5, 8, 6)
    arr[centre] = 1
    mask = sitk.GetImageFromArray(arr)
    mask.SetSpacing(spacing)
    out = _array(dilate_mm(mask, 6.0))
    z, y, x = np.indices(arr.shape)
    dist = np.sqrt(((x - 6) * 1.5) ** 2 + ((y - 8) * 1.0) ** 2 + ((z - 5) * 3.0) ** 2)
    np.testing.assert_array_equal(out, (dist <= 6.0).astype(np.uint8))
    # reaches 6 mm along x (4 voxels) and z (2 voxels) alike, not one voxel further
    assert out[5, 8, 6 + 4] and not out[5, 8, 6 + 5]
    assert out[5 + 2, 8, 6] and not out[5 + 3, 8, 6]
    assert out[5, 8 + 6, 6] and not out[5, 8 + 7, 6]
    # restricted to a 'within' mask, and r = 0 is the mask itself
    within = sitk.GetImageFromArray((z <= 5).astype(np.uint8))
    within.CopyInformation(mask)
    assert not _array(dilate_mm(mask, 6.0, within=within))[6:].any()
    np.testing.assert_array_equal(_array(dilate_mm(mask, 0.0)), arr)


def test_body_mask_is_one_filled_component(case):
    phases, label = case
    body = _array(body_mask(phases["PVP"]))
    assert body.dtype == np.uint8 and set(np.unique(body)) == {0, 1}
    assert body[_array(label) > 0].all()  # the liver is inside the body
    assert not body[:, 0, 0].any()  # the air corner is not
    from scipy import ndimage

    assert ndimage.label(body)[1] == 1


def test_random_blobs_stay_inside_the_liver_and_are_sized_in_mm(case):
    _, label = case
    liver = _array(label) == 1
    rng = np.random.default_rng(0)
    blobs = random_liver_blob_masks(liver, label.GetSpacing(), rng, 5, (8.0, 16.0))
    assert blobs.shape == liver.shape and set(np.unique(blobs)) <= set(range(6))
    assert not (blobs > 0)[~liver].any()
    voxel_ml = np.prod(label.GetSpacing()) / 1000.0
    volumes = [(blobs == k).sum() * voxel_ml for k in range(1, 6) if (blobs == k).any()]
    assert len(volumes) >= 3
    # a ball of radius <= 16 mm * 1.3 (aspect) * 1.25 (outline wobble) holds < 120 ml
    assert max(volumes) < 120 and np.median(volumes) > 0.5


# ----------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("dims", [2, 3])
def test_model_fills_only_the_hole_and_round_trips_through_safetensors(dims, tmp_path):
    torch.manual_seed(0)
    model = FFCInpainter(in_phases=["NC", "PVP"], base_channels=4, num_ffc_blocks=1, spatial_dims=dims).eval()
    spatial = (8, 16, 16)[-dims:]
    image = torch.randn(2, 2, *spatial)
    hole = torch.zeros(2, 1, *spatial)
    hole[..., 4:12, 4:12] = 1
    noise = torch.randn(2, 1, *spatial)
    with torch.no_grad():
        out = model(image, hole, noise=noise)
    assert out.shape == image.shape
    assert torch.equal(out[hole.expand_as(out) == 0], image[hole.expand_as(out) == 0])
    assert not torch.equal(out[hole.expand_as(out) == 1], image[hole.expand_as(out) == 1])

    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert config["in_phases"] == ["NC", "PVP"] and config["spatial_dims"] == dims
    weights = load_file(tmp_path / "diffusion_pytorch_model.safetensors")  # no pickle involved
    state = model.state_dict()
    assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)
    again = FFCInpainter.from_pretrained(tmp_path, use_safetensors=True).eval()
    with torch.no_grad():
        assert torch.equal(again(image, hole, noise=noise), out)


def test_fourier_branch_sees_the_whole_patch():
    """One FFC layer: a change in one corner moves the global branch's output in the opposite corner, while the
    local (3x3x3 convolution) branch there stays exactly unchanged."""
    torch.manual_seed(0)
    layer = FFC(local_channels=2, global_channels=6, dims=3).eval()
    x = torch.randn(1, 8, 8, 8, 8)
    with torch.no_grad():
        local_before, global_before = layer(x[:, :2], x[:, 2:])
        x[..., 0, 0, 0] += 3.0
        local_after, global_after = layer(x[:, :2], x[:, 2:])
    assert torch.equal(local_after[..., -1, -1, -1], local_before[..., -1, -1, -1])
    assert (global_after - global_before)[..., -1, -1, -1].abs().max() > 1e-4


# -------------------------------------------------------------------------------------------- training


def test_training_reduces_the_loss_and_writes_a_loadable_model(trained):
    out, model = trained
    history = json.loads((out / "training.json").read_text(encoding="utf-8"))["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert (out / "loss.csv").read_text(encoding="utf-8").splitlines()[0] == "epoch,loss,l1,texture,seconds"
    loaded = load_inpainter(out)
    assert loaded.config.in_phases == list(PHASES)
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())


def test_resume_continues_to_the_weights_of_an_uninterrupted_run(case, tmp_path):
    def train(folder, epochs, steps=4):
        return train_inpainter([case], folder, preset=TINY, epochs=epochs, steps_per_epoch=steps, seed=3,
                               progress=False)

    uninterrupted = train(tmp_path / "straight", 2)
    interrupted = tmp_path / "resumed"
    train(interrupted, 1)  # as if stopped after epoch 1
    state = json.loads((interrupted / "training.json").read_text(encoding="utf-8"))
    assert state["epochs_done"] == 1 and (interrupted / state["checkpoint"] / "optimizer.pt").is_file()
    resumed = train(interrupted, 2)
    assert json.loads((interrupted / "training.json").read_text(encoding="utf-8"))["epochs_done"] == 2
    assert not (interrupted / "checkpoints" / "epoch_0001").exists()  # only the latest checkpoint is kept
    reference = uninterrupted.state_dict()
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, reference[key]), key
    # a finished training does nothing: the model file is not rewritten
    weights = interrupted / "model" / "diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    train(interrupted, 2)
    assert weights.stat().st_mtime_ns == stamp
    # other settings in the same folder are refused
    with pytest.raises(InpaintingError, match="other settings"):
        train(interrupted, 2, steps=5)


# ------------------------------------------------------------------------------------------- inference


def _check_tumor_removed(case, normal, region, liver, dilation_mm):
    phases, label = case
    lab, reg = _array(label), _array(region) > 0
    np.testing.assert_array_equal(reg, _array(dilate_mm(label == 2, dilation_mm, body_mask(phases["PVP"]))))
    np.testing.assert_array_equal(_array(liver), (lab > 0).astype(np.uint8))
    for p in PHASES:
        before, after = _array(phases[p]), _array(normal[p])
        seen = before > -200  # voxels outside the phase's field of view (air after alignment) are kept as they are
        inside, tumor = reg & (lab > 0) & seen, (lab == 2) & seen
        assert normal[p].GetPixelID() == sitk.sitkInt16 and normal[p].GetSize() == phases[p].GetSize()
        np.testing.assert_array_equal(after[~reg], before[~reg])  # nothing changes outside the region
        mean, std = _healthy_range(before.astype(float), lab, reg)
        assert abs(after[inside].mean() - mean) <= 2 * std, p
        # the tumor itself moved towards the healthy liver (it differs by 14-50 HU in every phase here)
        assert abs(after[tumor].mean() - mean) < abs(before[tumor].mean() - mean), p


def test_inpaint_case_removes_the_tumor_with_the_learned_model(case, trained):
    out, _ = trained
    normal, region, liver = inpaint_case(*case, out, dilation_mm=8.0)
    _check_tumor_removed(case, normal, region, liver, 8.0)
    again, _, _ = inpaint_case(*case, out, dilation_mm=8.0)  # seeded: the same fill twice
    assert all(np.array_equal(_array(again[p]), _array(normal[p])) for p in PHASES)


@pytest.mark.parametrize("method", CLASSICAL_METHODS)
def test_classical_fallbacks_remove_the_tumor(case, method):
    normal, region, liver = inpaint_case(*case, method, dilation_mm=8.0)
    _check_tumor_removed(case, normal, region, liver, 8.0)
    lab, reg, before = _array(case[1]), _array(region) > 0, _array(case[0]["PVP"])
    filled = reg & (lab == 2) & (before >= -200)  # lung partial-volume voxels (< -200 HU) are kept as they are
    spread = _array(normal["PVP"])[filled].std()
    if method == "median":
        assert spread == 0  # flat
    elif method.endswith("+noise"):
        assert spread > 5  # grain like the healthy liver


def test_the_default_learned_fill_takes_its_coarse_structure_from_the_membrane_fill_and_its_detail_from_the_network(
        case, trained):
    from scipy import ndimage

    from synthesis.inpainting import STRUCTURE_SIGMA_MM

    out, _ = trained
    phases, label = case
    lab = _array(label)
    region_arr = random_liver_blob_masks(lab == 1, label.GetSpacing(), np.random.default_rng(3), 3, (8.0, 15.0)) > 0
    region = sitk.GetImageFromArray(region_arr.astype(np.uint8))
    region.CopyInformation(label)
    fused, learned, harmonic = (fill_region(phases, region, m, label=label, seed=1, **kw) for m, kw in
                                ((out, {}), (out, {"structure": "learned"}), ("harmonic", {})))
    sigma = STRUCTURE_SIGMA_MM / np.asarray(label.GetSpacing())[::-1]
    weight = np.maximum(ndimage.gaussian_filter(region_arr.astype(float), sigma, mode="constant"), 1e-6)

    def low(image):
        return ndimage.gaussian_filter(np.where(region_arr, _array(image), 0.0), sigma, mode="constant") / weight

    for p in ("AP", "PVP"):
        f, l = _array(fused[p]).astype(float), _array(learned[p]).astype(float)
        inside = region_arr & (_array(phases[p]) >= -200) & (_array(phases[p]) <= 400)  # the HU window is kept
        # fused = low(membrane) + network - low(network): the network's coarse part swapped for the membrane's
        swap = low(harmonic[p]) - low(learned[p])
        assert np.abs((f - l) - swap)[inside].mean() < 1.0 and np.abs(swap)[inside].mean() > 2
        # so its coarse structure is nearer the membrane's than the network's is
        assert (np.abs(low(fused[p]) - low(harmonic[p]))[inside].mean()
                < 0.6 * np.abs(low(learned[p]) - low(harmonic[p]))[inside].mean())
        assert np.array_equal(f[~region_arr], _array(phases[p])[~region_arr])
    with pytest.raises(InpaintingError, match="structure must be one of"):
        fill_region(phases, region, out, label=label, structure="sculpted")


def test_out_of_window_voxels_and_empty_regions_are_kept(case):
    phases, label = case
    region = sitk.Cast(sitk.GetImageFromArray(np.ones(_array(label).shape, np.uint8)), sitk.sitkUInt8)
    region.CopyInformation(label)
    filled = fill_region(phases, region, "median", label=label)
    before = _array(phases["AP"])
    keep = (before < -200) | (before > 400)  # air, lung, bone: never tumor
    np.testing.assert_array_equal(_array(filled["AP"])[keep], before[keep])
    no_tumor = sitk.Cast(label == 1, sitk.sitkUInt8)
    normal, region, _ = inpaint_case(phases, no_tumor, "median")
    assert not _array(region).any() and np.array_equal(_array(normal["NC"]), _array(phases["NC"]))


def test_phase_mismatch_and_missing_model_are_clear_errors(case, trained, tmp_path):
    out, _ = trained
    phases, label = case
    other = {"PVP": phases["PVP"], "ART": phases["AP"]}
    with pytest.raises(InpaintingError) as err:
        inpaint_case(other, label, out)
    message = str(err.value)
    assert "['NC', 'AP', 'PVP', 'DELAY']" in message and "['PVP', 'ART']" in message
    with pytest.raises(InpaintingError, match="no trained inpainter"):
        inpaint_case(phases, label, tmp_path)
    with pytest.raises(InpaintingError, match="neither a classical method"):
        inpaint_case(phases, label, "telepathy")
    shifted = sitk.Image(phases["NC"])
    shifted.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(InpaintingError, match="not on the grid"):
        inpaint_case({**phases, "NC": shifted}, label, "median")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_the_cli_offers_builds_a_model_that_fills_its_own_patch(name):
    from nnunetv2_diff4mm.cli.train_inpainter import build_parser

    assert name in build_parser()._option_string_actions["--preset"].choices
    preset = get_preset(name)
    model = FFCInpainter(**preset.model_config(PHASES)).eval()
    assert all(s % model.size_multiple == 0 for s in preset.patch_size)
    image = torch.zeros((1, len(PHASES), *preset.patch_size))
    hole = torch.zeros((1, 1, *preset.patch_size))
    hole[..., 2:-2, 4:-4, 4:-4] = 1
    with torch.no_grad():
        out = model(image, hole, generator=torch.Generator().manual_seed(0))
    assert out.shape == image.shape and torch.isfinite(out).all()
    assert torch.equal(out[hole.expand_as(out) == 0], image[hole.expand_as(image) == 0])


def test_a_presets_old_name_gives_the_same_preset():
    from synthesis.inpainting import LEGACY_PRESET_NAMES

    assert LEGACY_PRESET_NAMES == {"default": "cpu"} and "default" not in PRESETS
    assert get_preset("default") == get_preset("cpu") == PRESETS["cpu"]


def test_a_second_training_into_the_same_folder_is_refused_while_one_runs(tmp_path):
    """Two trainings writing one checkpoint folder collided on its epoch folders ("Directory not empty"); the
    folder lock refuses the second at once, before it reads a case, and names the holder."""
    from registration.nnunet_raw import DatasetLockedError, dataset_lock
    from synthesis.inpainting import INPAINTER_LOCK, train_inpainter

    out = tmp_path / "inpainter"
    with dataset_lock(out, INPAINTER_LOCK) as lock:
        assert lock.name == ".diff4mm_train_inpainter.lock"
        with pytest.raises(DatasetLockedError, match="another diff4mm_train_inpainter is writing this inpainter "
                                                     "folder; wait for it to finish, or train into another -o"):
            train_inpainter(iter(()), out, epochs=1, progress=False)  # no case is read before the lock
    assert not out.exists()  # the holder created it, wrote nothing, and removed it again
