"""Hand-written numerics checked against the library they stand in for (issue #17): the B-spline refinement and
the affine flattening of registration against SimpleITK's own transforms, the HU <-> nnU-Net mapping against
nnU-Net's CTNormalization, and the synthetic pool's sample format against nnU-Net's dataset and data loader."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from registration.register import _as_affine, refine_bspline


def _points(rng: np.random.Generator, lo, hi, n: int = 300) -> np.ndarray:
    return rng.uniform(lo, hi, size=(n, 3))


def test_refined_bspline_is_the_same_deformation_on_a_grid_twice_as_fine():
    rng = np.random.default_rng(0)
    domain = sitk.Image([30, 24, 12], sitk.sitkUInt8)
    domain.SetSpacing((2.0, 2.5, 5.0))
    domain.SetOrigin((-20.0, 13.0, 7.0))
    domain.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # rotated frame: origin maths matters
    coarse = sitk.BSplineTransformInitializer(domain, transformDomainMeshSize=[3, 2, 2], order=3)
    coarse.SetParameters(tuple(rng.normal(0.0, 3.0, len(coarse.GetParameters()))))  # displacements, mm
    fine = refine_bspline(coarse)

    assert list(fine.GetTransformDomainMeshSize()) == [6, 4, 4]
    np.testing.assert_allclose(fine.GetTransformDomainPhysicalDimensions(),
                               coarse.GetTransformDomainPhysicalDimensions())
    # points inside the domain (its box in index space, mapped to physical space)
    index = _points(rng, (0, 0, 0), np.asarray(domain.GetSize()) - 1)
    physical = [domain.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in index]
    moved = np.array([[coarse.TransformPoint(p), fine.TransformPoint(p)] for p in physical])
    assert np.abs(moved[:, 0] - np.asarray(physical)).max() > 1.0  # the deformation is not trivial
    np.testing.assert_allclose(moved[:, 1], moved[:, 0], atol=1e-6)


def test_affine_flattening_maps_points_like_the_nested_composite():
    rng = np.random.default_rng(1)
    rigid = sitk.Euler3DTransform((10.0, -4.0, 30.0), 0.1, -0.05, 0.2, (3.0, -2.0, 5.0))
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple((np.eye(3) + rng.normal(0.0, 0.05, (3, 3))).ravel()))
    affine.SetCenter((-7.0, 2.0, 11.0))
    affine.SetTranslation((1.5, 0.5, -2.5))
    second = sitk.Euler3DTransform((0.0, 5.0, -3.0), -0.02, 0.03, 0.0, (-1.0, 0.0, 2.0))
    nested = sitk.CompositeTransform([rigid, sitk.CompositeTransform([affine, second])])

    flat = _as_affine(nested)
    points = _points(rng, (-100, -100, -50), (100, 100, 50))
    expected = np.array([nested.TransformPoint(tuple(p)) for p in points])
    np.testing.assert_allclose([flat.TransformPoint(tuple(p)) for p in points], expected, atol=1e-9)
    assert np.abs(expected - points).max() > 5.0
    with pytest.raises(TypeError, match="not a linear transform"):
        _as_affine(sitk.CompositeTransform([rigid, sitk.TranslationTransform(3, (1.0, 0.0, 0.0))]))


def test_intensity_mapping_is_nnunets_ct_normalization_and_inverts_it_inside_the_window():
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization

    from nnunetv2_diff4mm.training.normal_cases import IntensityMapping

    properties = {"mean": 92.5, "std": 41.0, "percentile_00_5": -60.0, "percentile_99_5": 260.0}
    plans = {"foreground_intensity_properties_per_channel": {"1": properties}}
    mapping = IntensityMapping.from_plans(plans, 1)
    hu = np.random.default_rng(2).uniform(-300.0, 500.0, (6, 7, 8)).astype(np.float32)

    nnunet = CTNormalization(use_mask_for_norm=False, intensityproperties=properties).run(hu.copy())
    np.testing.assert_allclose(mapping.to_normalized(hu), nnunet, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(mapping.to_hu(nnunet), np.clip(hu, -60.0, 260.0), rtol=1e-6, atol=1e-3)


def test_pool_sample_goes_through_nnunets_loader_like_a_preprocessed_case(tmp_path):
    """A synthetic sample written by the pool and served by SyntheticMixDataset is read by nnU-Net's own data
    loader exactly as a case saved by nnU-Net's dataset class: same array layout, and a tumor-forced patch holds
    tumor in both (class_locations keyed and shaped as nnU-Net's preprocessor makes them)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetDatasetBlosc2
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunetv2_diff4mm.training.mixed_dataset import SyntheticMixDataset, is_synthetic
    from nnunetv2_diff4mm.training.synthetic_pool import save_sample

    shape = (12, 24, 28)
    rng = np.random.default_rng(3)
    data = rng.normal(0.0, 1.0, (4, *shape)).astype(np.float32)
    seg = np.zeros((1, *shape), np.int16)
    seg[0, 2:10, 4:20, 4:24] = 1
    real_seg, synthetic_seg = seg.copy(), seg.copy()
    real_seg[0, 3:5, 5:8, 5:8] = 2  # the tumor in one corner of the liver ...
    synthetic_seg[0, 7:9, 15:18, 19:22] = 2  # ... and, painted, in the opposite one
    folder = tmp_path / "Diff4MMCPUPlans_3d_fullres"
    folder.mkdir()
    locations = DefaultPreprocessor._sample_foreground_locations(real_seg, [1, 2], seed=0)
    nnUNetDatasetBlosc2.save_case(data, real_seg.astype(np.int8), {"class_locations": locations},
                                  str(folder / "case_000"), chunks=(4, *shape), blocks=(4, *shape))
    pool = tmp_path / "pool"
    pool.mkdir()
    save_sample(pool, 0, {"data": data, "seg": synthetic_seg, "source": "case_000",
                          "class_locations": DefaultPreprocessor._sample_foreground_locations(synthetic_seg, [1, 2],
                                                                                              seed=0)})
    real = infer_dataset_class(str(folder))(str(folder), ["case_000"])
    mixed = SyntheticMixDataset(real, pool, 0.5)
    synthetic_id = next(i for i in mixed.identifiers if is_synthetic(i))

    labels = LabelManager({"background": 0, "liver": 1, "tumor": 2}, regions_class_order=None)
    patch = (8, 16, 16)
    loader = nnUNetDataLoader(mixed, 2, patch, patch, labels, oversample_foreground_percent=1.0)
    for identifier, truth in (("case_000", real_seg), (synthetic_id, synthetic_seg)):
        case_data, case_seg, seg_prev, properties = mixed.load_case(identifier)
        assert case_data.shape == (4, *shape) and case_seg.shape == (1, *shape) and seg_prev is None
        np.testing.assert_array_equal(np.asarray(case_seg), truth)
        assert set(properties["class_locations"]) == {1, 2}
        assert properties["class_locations"][2].shape[1] == 4  # (channel, z, y, x) per sampled voxel
        lo, hi = loader.get_bbox(shape, True, properties["class_locations"], overwrite_class=2)
        box = tuple(slice(max(a, 0), b) for a, b in zip(lo, hi))
        assert (truth[0][box] == 2).any()

    loader.get_indices = lambda: ["case_000", synthetic_id]  # one of each in one batch
    batch = loader.generate_train_batch()
    assert tuple(batch["data"].shape) == (2, 4, *patch) and tuple(batch["target"].shape) == (2, 1, *patch)
    assert batch["keys"] == ["case_000", synthetic_id]
    assert all((batch["target"][k] == 2).any() or (batch["target"][k] == 1).any() for k in range(2))
