"""Normal CT generator (stage 2): remove the tumors from every phase by inpainting a dilated tumor mask.

The annotated (reference) phase's tumor mask is dilated in mm within the body, so that tumor tissue that the
registration left misaligned in the other phases is covered too, and the region is filled in ALL phases with
healthy-looking tissue. Fillers:

- ``FFCInpainter`` (learned; :func:`train_inpainter`): trained on healthy liver only: random lobulated holes are
  cut into tumor-free liver and the network learns to restore them (LaMa's recipe: large random masks, FFT
  receptive field). Works on a fixed working grid in mm, ROI by ROI.
- classical fallbacks, for users without a trained model (no learning involved, named for what they do):
  ``"median"`` (the healthy-liver median of the phase), ``"harmonic"`` (membrane fill: the Laplace equation
  solved in the hole with the surrounding voxels as boundary values, liver and non-liver kept apart), each
  optionally ``"+noise"`` (the case's own native grain, see below).

Conventions: phases are a ``{name: sitk.Image}`` dict on one grid with the label (0 background, 1 liver,
2 tumor); images come back as int16 HU on the same grid. Intensities for the network: HU clipped to the model's
``hu_window`` (default -200..400 HU: fat to enhanced vessels) and mapped linearly to [-1, 1]; the window is in
the model config, so inference normalises as training did. Voxels outside it (air, lung, bone) are never tumor
and are kept as they are.

Working grid: the network sees every case resampled (linear) to the model's ``spacing_mm`` (default 3 x 3 x
5 mm), around the liver for training and around each hole for inference, and its fill is resampled back onto
the native grid inside the hole only. A 0.8 mm clinical scan and a 3 mm phantom scan thus show the network the
same tissue scale (hole sizes, vessel calibres, grain correlation in voxels). 3 x 3 x 5 mm is the phantom's
native grid and a common clinical reconstruction, and keeps training to minutes on a CPU; a GPU preset can use
1.5 x 1.5 x 2.5 mm. Cost of the choice: on sub-millimetre scans the fill is smoother than the native grain,
so by default (``grain=True``) the fill gets the grain its working grid cannot hold, measured per phase on
the case's healthy liver at native resolution (synthesis/grain.py), and (``structure="membrane"``) its coarse
structure comes from the harmonic fill, its detail from the network (docs/decisions.md, Stage 2).
"""

# The package is split by job (issue #17): presets/constants, grids and checks, training, classical fills,
# inference. Everything callers import from ``synthesis.inpainting`` is re-exported here.

from ..devices import resolve_device
from ..intensity import denormalize_hu, normalize_hu
from .fill import STRUCTURE_SIGMA_MM, STRUCTURES, fill_region, inpaint_case, tumor_inpaint_region
from .grids import _check_phases
from .model_io import inpainter_training_cases, load_inpainter
from .presets import (CHECKPOINT_FOLDER, CLASSICAL_METHODS, DEFAULT_DILATION_MM, FORMAT_VERSION, LEGACY_PRESET_NAMES,
                      MANIFEST_FILE, MODEL_FOLDER, PRESETS, ROI_CONTEXT_MM, STATE_FILE, WEIGHTS_FILE, InpainterPreset,
                      InpaintingError, get_preset)
from .training import INPAINTER_LOCK, inpainting_loss, train_inpainter

__all__ = ["CHECKPOINT_FOLDER", "CLASSICAL_METHODS", "DEFAULT_DILATION_MM", "FORMAT_VERSION", "INPAINTER_LOCK",
           "LEGACY_PRESET_NAMES", "MANIFEST_FILE", "MODEL_FOLDER", "PRESETS", "ROI_CONTEXT_MM", "STATE_FILE",
           "STRUCTURES", "STRUCTURE_SIGMA_MM", "WEIGHTS_FILE", "InpainterPreset", "InpaintingError", "_check_phases",
           "denormalize_hu", "fill_region", "get_preset", "inpaint_case", "inpainter_training_cases",
           "inpainting_loss", "load_inpainter", "normalize_hu", "resolve_device", "train_inpainter",
           "tumor_inpaint_region"]
