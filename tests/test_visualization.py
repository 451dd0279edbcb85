"""QA pictures (issue #19): what each stage changed, drawn where a reviewer can see it."""
from __future__ import annotations

import matplotlib.image
import numpy as np
import SimpleITK as sitk

from nnunetv2_diff4mm.visualization import _zoom_box, change_montage

PHASES = ("NC", "AP", "PVP", "DELAY")


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 5.0))
    return image


def test_change_montage_is_a_grid_of_before_after_difference_per_phase_zoomed_on_the_region(tmp_path):
    rng = np.random.default_rng(0)
    before = {p: _image((40 + 10 * rng.standard_normal((12, 80, 90))).astype(np.float32)) for p in PHASES}
    region = np.zeros((12, 80, 90), np.uint8)
    region[5:8, 30:40, 50:62] = 1
    after = {p: _image(sitk.GetArrayFromImage(img) + 60.0 * region) for p, img in before.items()}
    png = change_montage(before, after, _image(region), tmp_path / "qa" / "case.png", "t",
                         names=("normal", "synthetic"), outline_after=False)
    height, width = matplotlib.image.imread(str(png)).shape[:2]
    assert height > width  # one row per phase (4), three columns: not one 2816 px wide row
    assert [p.name for p in (tmp_path / "qa").iterdir()] == ["case.png"]  # no temporary file left
    # the zoom: the region's box grown by 20 mm, i.e. 4 slices of 5 mm and 10 voxels of 2 mm, clipped to the grid
    assert _zoom_box(region > 0, (5.0, 2.0, 2.0), 20.0) == (slice(1, 12), slice(20, 50), slice(40, 72))
    # an empty region (a synthetic case without a tumor) still draws, unzoomed
    assert change_montage(before, before, _image(np.zeros_like(region)), tmp_path / "empty.png").is_file()
